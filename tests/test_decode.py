"""The engine's decode step against the model's forward: same logits, every family and layout."""

import pytest
import torch

from test_model import FAMILIES, tiny
from yunque.infer.decode import DecodeStep
from yunque.model.matmul import ProductPlan, Linear
from yunque.model.quantize import quantize_int8

VARIANTS = {  # name: (family, overrides)
    **{family: (family, {}) for family in FAMILIES},
    "qwen2": ("llama", dict(qkv_bias=True, rope_scaling=None, tie_embeddings=True)),
    "gpt2 gqa": ("gpt2", dict(n_kv_head=1)),
}


def _model(name: str):
    family, overrides = VARIANTS[name]
    return tiny(family, **overrides)


def _plan(model, padded):
    for m in model.modules():
        if isinstance(m, Linear):
            m.plan = padded


def _prefilled(model, lengths, slots=4, max_len=32):
    """A cache whose rows 0..n-1 hold prompts of `lengths`, and the full token table to read them from."""
    torch.manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (len(lengths), 20))
    cache = model.make_cache(slots, max_len)
    for row, n in enumerate(lengths):
        model(ids[row : row + 1, :n], cache=cache.rows([row]), input_pos=torch.tensor([0]))
    return ids, cache


@pytest.mark.parametrize("static", [False, True], ids=["sliced", "static"])
@pytest.mark.parametrize("plan", [None, ProductPlan((0, 2, 2, 4, 4)), ProductPlan((0, 1, 2, 3, 4))], ids=["plain", "padded", "transposed"])
@pytest.mark.parametrize("name", list(VARIANTS))
@torch.inference_mode()
def test_decode_step_equals_the_model_forward(name, plan, static):
    model = _model(name)
    _plan(model, plan)
    step = DecodeStep(model, static=static)
    for lengths in ([6], [5, 5, 5], [3, 9, 6]):  # one row; rows at one position; rows at different positions
        ids, ours = _prefilled(model, lengths)
        _, ref = _prefilled(model, lengths)
        pos = torch.tensor(lengths)
        for _ in range(8):  # past the sliding window of 5
            token = ids[torch.arange(len(lengths)), pos]
            got = step(token, pos, ours, int(pos.min()), int(pos.max()))
            want = model(token[:, None], cache=ref.rows(list(range(len(lengths)))), input_pos=pos)[:, 0]
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            pos = pos + 1
        for layer in range(model.config.n_layer):  # the step wrote the same keys and values
            torch.testing.assert_close(ours.k[layer], ref.k[layer], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ours.v[layer], ref.v[layer], atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_decode_step_of_an_int8_model_equals_its_forward():
    model = quantize_int8(_model("llama"))
    step = DecodeStep(model)
    ids, ours = _prefilled(model, [4, 7])
    _, ref = _prefilled(model, [4, 7])
    pos = torch.tensor([4, 7])
    token = ids[torch.arange(2), pos]
    got = step(token, pos, ours, 4, 7)
    want = model(token[:, None], cache=ref.rows([0, 1]), input_pos=pos)[:, 0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("plan", [None, ProductPlan((0, 1, 2, 3, 4))], ids=["plain", "transposed"])
@torch.inference_mode()
def test_decode_step_of_a_bf16_model_equals_its_forward(plan):
    """bf16 checkpoints stay bf16 on CPUs with native bf16: the step must match the forward there too."""
    model = _model("qwen2").to(torch.bfloat16)
    _plan(model, plan)
    step = DecodeStep(model)
    ids, ours = _prefilled(model, [4, 7, 5])
    _, ref = _prefilled(model, [4, 7, 5])
    pos = torch.tensor([4, 7, 5])
    for _ in range(4):
        token = ids[torch.arange(3), pos]
        got = step(token, pos, ours, int(pos.min()), int(pos.max()))
        want = model(token[:, None], cache=ref.rows([0, 1, 2]), input_pos=pos)[:, 0]
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)
        pos = pos + 1


@torch.inference_mode()
def test_the_static_step_is_traced_once_per_row_count_not_per_position():
    model = _model("mistral")
    graphs = []

    def count(gm, example_inputs):  # a torch.compile backend that runs the captured graph as it is
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()  # no graphs cached from elsewhere
    step = torch.compile(DecodeStep(model, static=True), backend=count)
    ids, cache = _prefilled(model, [3, 9, 6])
    pos = torch.tensor([3, 9, 6])
    for i in range(12):  # the sliced step's shapes change with every position; these must not
        n = (3, 2, 1)[i // 4]
        step(ids[torch.arange(n), pos[:n]], pos[:n], cache, int(pos[:n].min()), int(pos[:n].max()))
        pos = pos + 1
    # Only the row count makes new graphs: the first one specialises on it, the second has it
    # dynamic, and one row is always a graph of its own (torch specialises sizes 0 and 1).
    assert len(graphs) == 3
    torch._dynamo.reset()
