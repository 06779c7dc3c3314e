import pytest
import torch
import torch.nn.functional as F

from yunque.model import matmul
from yunque.model.config import ModelConfig
from yunque.infer.generate import generate_ids
from yunque.model.matmul import Linear, ProductPlan, measure_products, plan_from, tune_products
from yunque.model.transformer import Transformer


def _model(**kw) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=300, n_layer=2, n_head=4, d_model=64, max_seq_len=64, **kw)
    return Transformer(cfg).eval()


@pytest.mark.parametrize("bias", [False, True])
def test_plan_gives_f_linear_results_for_every_row_count(bias):
    torch.manual_seed(0)
    weight, b = torch.randn(48, 32), torch.randn(48) if bias else None
    plan = ProductPlan((0, 4, 2, 4, 4, 0, 8, 8, 8))  # padded, exact, and plain rows
    for shape in [(1, 32), (1, 1, 32), (2, 1, 32), (3, 32), (5, 1, 32), (2, 3, 32), (4, 2, 32), (20, 32)]:
        x = torch.randn(shape)
        got = plan.linear(x, weight, b)
        torch.testing.assert_close(got, F.linear(x, weight, b), rtol=1e-5, atol=1e-5)
        assert got.shape == (*shape[:-1], 48) and got.is_contiguous()  # attention kernels need contiguous rows


def test_plan_from_takes_the_fastest_measured_form_and_pads_to_a_bucket():
    times = {1: (10.0, 12.0), 2: (14.0, 8.0), 4: (20.0, 9.0), 8: (30.0, 29.5)}
    plan = plan_from(times)
    assert plan.padded[1] == 2  # one row: transposed on two rows beats plain
    assert plan.padded[2] == 2 and plan.padded[3] == 4 and plan.padded[4] == 4
    assert plan.padded[5] == 0  # 29.5 is within MIN_GAIN of 30: stay plain
    assert len(plan.padded) == 9  # rows beyond the largest bucket: plain F.linear


def test_tuned_model_computes_the_same_and_is_measured_once(monkeypatch):
    model = _model()
    one, batch = torch.randint(0, 300, (1, 1)), torch.randint(0, 300, (3, 5))
    with torch.no_grad():  # before tuning: plain F.linear everywhere
        ref_one, ref_batch = model(one), model(batch)
    calls = []
    real = measure_products
    monkeypatch.setattr(matmul, "measure_products", lambda m: calls.append(m) or real(m, buckets=(1, 2, 4), rounds=1))
    plan = tune_products(model)
    assert plan is not None and tune_products(model) is plan and len(calls) == 1
    assert all(m.plan is plan for m in model.modules() if isinstance(m, Linear))
    # Whatever the measurement chose, force the transposed form (one row padded to 2, 2-15 rows to 16).
    for m in model.modules():
        if isinstance(m, Linear):
            m.plan = ProductPlan((0, 2) + (16,) * 14)
    with torch.no_grad():
        torch.testing.assert_close(model(one), ref_one, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(batch), ref_batch, rtol=1e-5, atol=1e-5)


def test_generation_is_the_same_with_and_without_a_plan():
    plain, planned = _model(qkv_bias=True), _model(qkv_bias=True)
    plan = ProductPlan((0, 4, 2, 4, 4))
    for m in planned.modules():
        if isinstance(m, Linear):
            m.plan = plan
    matmul._PLANS[planned] = plan  # marked as tuned, so generation keeps these plans: the forced one,
    matmul._PLANS[plain] = None  # and plain F.linear
    ids = [list(generate_ids(m, [5, 6, 7], temperature=0, max_new_tokens=12, stop_token_ids=[])) for m in (plain, planned)]
    assert all(m.plan is None for m in plain.modules() if isinstance(m, Linear))
    assert ids[0] == ids[1] and len(ids[0]) == 12


def test_training_through_the_transposed_form_gives_the_same_gradients():
    row, planned = _model(), _model()
    for m in planned.modules():
        if isinstance(m, Linear):
            m.plan = ProductPlan((0, 2, 2))
    idx = torch.randint(0, 300, (1, 2))
    row.train()(idx, idx)[1].backward()
    planned.train()(idx, idx)[1].backward()
    for a, b in zip(row.parameters(), planned.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6)


def test_tuning_leaves_the_global_random_stream_alone():
    model = _model()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tune_products(model)
    assert torch.equal(torch.rand(3), expected)
