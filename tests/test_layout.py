import torch
from torch import nn

from yunque import layout
from yunque.config import ModelConfig
from yunque.engine import generate_ids
from yunque.hf import load_pretrained
from yunque.layout import is_column_major, measure_weight_orders, set_weight_order, tune_weight_order
from yunque.model import Transformer


def _model(tie: bool = True) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=300, n_layer=2, n_head=4, d_model=64, max_seq_len=64, tie_embeddings=tie)
    return Transformer(cfg)


def _linear_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear)]


def test_column_major_weights_give_the_same_logits_loss_and_gradients():
    row, col = _model(), _model()
    set_weight_order(col, column_major=True)
    assert all(is_column_major(w) for w in _linear_weights(col))
    assert all(w.is_contiguous() for w in _linear_weights(row))
    idx = torch.randint(0, 300, (2, 16))
    (l_row, loss_row), (l_col, loss_col) = row(idx, idx), col(idx, idx)
    torch.testing.assert_close(l_col, l_row, rtol=1e-5, atol=1e-5)
    loss_row.backward()
    loss_col.backward()
    for p_row, p_col in zip(row.parameters(), col.parameters()):
        torch.testing.assert_close(p_col.grad, p_row.grad, rtol=1e-4, atol=1e-6)
        assert p_col.grad.stride() == p_col.stride()  # the optimizer sees gradients in the parameter's order
    # An optimizer step keeps training working on the re-laid-out parameters.
    opt = torch.optim.AdamW(col.parameters(), lr=1e-3)
    opt.step()
    assert col(idx, idx)[1] < loss_col


def test_set_weight_order_round_trips_and_keeps_ties_and_state_dict(tmp_path):
    model = _model(tie=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    set_weight_order(model, column_major=True)
    assert model.lm_head.weight is model.tok_emb.weight
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    model.save_pretrained(tmp_path / "m")  # safetensors needs contiguous tensors: saving copes
    loaded = load_pretrained(tmp_path / "m")
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, before[k])
    set_weight_order(model, column_major=False)
    assert all(w.is_contiguous() for w in _linear_weights(model))


def test_measure_returns_both_orders_and_tune_runs_once(monkeypatch):
    model = _model().eval()
    row, col = measure_weight_orders(model, rounds=1)
    assert row > 0 and col > 0
    calls = []
    monkeypatch.setattr(layout, "measure_weight_orders", lambda m: calls.append(m) or (2.0, 1.0))
    fresh = _model().eval()
    assert tune_weight_order(fresh) is True  # column-major measured faster: kept
    assert tune_weight_order(fresh) is True and len(calls) == 1  # measured once per model
    slow = _model().eval()
    monkeypatch.setattr(layout, "measure_weight_orders", lambda m: (1.0, 1.01))
    assert tune_weight_order(slow) is False  # within noise: PyTorch's default order stays
    ids = list(generate_ids(fresh, [1, 2, 3], temperature=0, max_new_tokens=8, stop_token_ids=[]))
    assert ids == list(generate_ids(slow, [1, 2, 3], temperature=0, max_new_tokens=8, stop_token_ids=[]))
