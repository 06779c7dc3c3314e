import torch
from torch import nn

from yunque.model.config import ModelConfig
from yunque.infer.generate import generate_ids
from yunque.model.transformer import Transformer
from yunque.model.quantize import Int8Linear, quantize_int8


def test_int8_linear_is_close_and_stores_int8():
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    q = Int8Linear(lin)
    x = torch.randn(3, 5, 64)
    assert q.qweight.dtype == torch.int8 and q.scale.shape == (48,)
    ref = lin(x)
    assert (q(x) - ref).abs().max() <= 0.02 * ref.abs().max()


def test_quantized_model_decodes_close_to_float():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=200, n_layer=2, n_head=4, d_model=64, max_seq_len=64, tie_embeddings=True)
    model = Transformer(cfg).eval()
    idx = torch.randint(0, 200, (2, 20))
    with torch.no_grad():
        ref = model(idx).log_softmax(-1)
        quantize_int8(model)
        got = model(idx).log_softmax(-1)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert model.tok_emb.weight.dtype == torch.float32  # the embedding table is left exact
    # Same distribution up to small noise: KL per position well below a hundredth of a nat.
    kl = (ref.exp() * (ref - got)).sum(-1)
    assert kl.max() < 1e-2
    assert len(list(generate_ids(model, [1, 2, 3], temperature=0, max_new_tokens=10, stop_token_ids=[]))) == 10
