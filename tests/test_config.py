import re

import pytest

from yunque.model.config import PRESETS, ModelConfig, preset
from yunque.train.config import TrainConfig
from yunque.errors import YunqueError


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_map_to_a_hugging_face_family_and_round_trip(name):
    import torch

    from yunque.model.hf import FAMILIES, config_from_hf, config_to_hf, family_of

    cfg = preset(name)
    hf = config_to_hf(cfg, torch.float32)
    assert hf["model_type"] == family_of(cfg) in FAMILIES
    assert name.split("-")[0] in (hf["model_type"], "cpu")  # the family a preset is named after
    assert config_from_hf(hf) == cfg


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


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(n_layer="abc"), "n_layer must be an integer, got 'abc'"),
        (dict(n_layer=1.5), "n_layer must be an integer, got 1.5"),
        (dict(n_layer=True), "n_layer must be an integer, got True"),
        (dict(rope_theta="big"), "rope_theta must be a number"),
        (dict(n_kv_head="2"), "n_kv_head must be an integer or None, got '2'"),
        (dict(positions=1), "positions must be 'learned' or 'rope', got 1"),
        (dict(tie_embeddings="yes"), "tie_embeddings must be true or false"),
        (dict(rope_scaling=[1]), "rope_scaling must be dict or None"),
    ],
)
def test_wrong_value_types_are_named(changes, words):
    with pytest.raises(YunqueError, match=re.escape(words)):
        ModelConfig(**changes)


def test_int_for_float_is_coerced():
    cfg = ModelConfig(rope_theta=500000, dropout=0)
    assert type(cfg.rope_theta) is float and type(cfg.dropout) is float


@pytest.mark.parametrize(
    "fields, words",
    [
        (dict(max_steps="ten"), "max_steps must be an integer or None, got 'ten'"),
        (dict(lr="x"), "lr must be a number, got 'x'"),
        (dict(compile="no"), "compile must be true or false or None"),
        (dict(model={"n_layer": "abc"}), "n_layer must be an integer, got 'abc'"),
        (dict(model={"max_seq_len": "long"}), "max_seq_len must be an integer"),
    ],
)
def test_training_config_types_are_checked(fields, words):
    with pytest.raises(YunqueError, match=re.escape(words)):
        TrainConfig.from_dict(fields)
    assert TrainConfig(lr=1).lr == 1.0
