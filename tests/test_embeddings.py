import pytest
import torch

from yunque.model.config import ModelConfig
from yunque.infer.embeddings import embed
from yunque.errors import YunqueError
from yunque.model.transformer import Transformer
from yunque.text.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def setup():
    tok = Tokenizer.train_from_iterator(["the cat sat on the mat. el gato se sentó. " * 20], 300, show_progress=False)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, d_model=16, max_seq_len=32)).eval()
    return model, tok


def test_embeddings_are_unit_mean_pooled_and_batch_independent(setup):
    model, tok = setup
    texts = ["the cat", "el gato se sentó on the mat", "mat", "the cat sat on the mat."]
    e = embed(model, tok, texts, batch_size=3)
    assert e.shape == (4, 16)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(4))
    for i, text in enumerate(texts):  # padding beside other texts changes nothing
        torch.testing.assert_close(embed(model, tok, [text])[0], e[i], atol=1e-5, rtol=0)
    idx = torch.tensor([tok.encode(texts[1])])
    states = model.hidden_states(idx)
    torch.testing.assert_close(model.lm_head(states), model(idx))  # the states the LM head reads
    h = states[0].mean(0)
    torch.testing.assert_close(e[1], h / h.norm(), atol=1e-5, rtol=0)


def test_too_long_or_empty_text_is_an_error_unless_truncated(setup):
    model, tok = setup
    long = "the cat sat on the mat " * 40
    with pytest.raises(YunqueError, match="truncate=True"):
        embed(model, tok, [long])
    assert embed(model, tok, [long], truncate=True).shape == (1, 16)
    with pytest.raises(YunqueError, match="empty"):
        embed(model, tok, [""])
