import pytest

from yunque.config import PRESETS, ModelConfig, preset
from yunque.errors import YunqueError


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_valid(name):
    cfg = preset(name)
    assert cfg.n_head % cfg.n_kv_head == 0
    assert cfg.head_dim * cfg.n_head == cfg.d_model


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(d_model=100, n_head=3), "n_head (3) must divide d_model (100)"),
        (dict(n_head=6, n_kv_head=4), "n_kv_head (4) must divide n_head (6)"),
        (dict(n_experts=1), "n_experts"),
        (dict(n_experts=4, n_experts_per_tok=5), "n_experts_per_tok"),
        (dict(positions="alibi"), "positions"),
        (dict(dropout=1.5), "dropout"),
    ],
)
def test_inconsistent_configs_are_rejected_with_a_sentence(changes, words):
    with pytest.raises(YunqueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        ModelConfig(**changes)


def test_round_trip_through_dict():
    cfg = preset("mixtral-tiny", rope_scaling={"rope_type": "llama3", "factor": 8.0})
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_fields_and_presets_are_named():
    with pytest.raises(YunqueError, match="bogus"):
        ModelConfig.from_dict({"bogus": 1})
    with pytest.raises(YunqueError, match="gpt2"):
        preset("nope")
