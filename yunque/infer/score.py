"""Scoring a text instead of continuing it: each token's log probability given the ones before
it. This is what evaluation harnesses ask for (lm-eval's loglikelihood via OpenAI's
`echo` + `logprobs`): one forward over the prompt, the LM head applied a slice of positions at
a time so the logits never hold more than a bounded number of floats.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from yunque.errors import YunqueError
from yunque.infer.batch import TokenLogprob, token_logprobs
from yunque.model.transformer import Transformer

_LOGITS_FLOATS = 1 << 24  # positions x vocabulary per slice of the LM head (64 MB of float32)


@torch.inference_mode()
def prompt_logprobs(model: Transformer, ids: Sequence[int], top: int = 0, vocab: int | None = None) -> list[TokenLogprob]:
    """For each token of `ids`, its log probability after the tokens before it and the `top`
    likeliest alternatives there; the first token has none (`logprob` None). `vocab` limits the
    alternatives to ids a tokenizer can decode (padded embeddings)."""
    ids = [int(i) for i in ids]
    if not ids:
        return []
    if len(ids) > model.config.max_seq_len:
        raise YunqueError(f"The text is {len(ids)} tokens but the model's context holds {model.config.max_seq_len}; score a shorter text.")
    device = model.tok_emb.weight.device
    hidden = model.hidden_states(torch.tensor([ids], device=device))[0]
    width = min(vocab or model.config.vocab_size, model.config.vocab_size)
    out = [TokenLogprob(ids[0], None, [])]
    step = max(1, _LOGITS_FLOATS // width)
    for start in range(0, len(ids) - 1, step):
        stop = min(start + step, len(ids) - 1)
        out += token_logprobs(model.lm_head(hidden[start:stop])[:, :width], ids[start + 1 : stop + 1], top)
    return out
