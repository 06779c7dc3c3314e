"""Greedy generation matches transformers' `generate` token for token on the same weights."""

import pytest
import torch

import peers
from yunque.infer.generate import generate_batch, generate_ids
from yunque.model.transformer import Transformer

transformers = peers.require("transformers")

CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=256, n_positions=128, n_embd=64, n_layer=2, n_head=4),
}


@pytest.mark.parametrize("family", list(CONFIGS))
def test_greedy_ids_identical_to_transformers_generate(family, tmp_path):
    torch.manual_seed(0)
    theirs = transformers.AutoModelForCausalLM.from_config(CONFIGS[family](), attn_implementation="sdpa").eval()
    with torch.no_grad():  # the default init gives near-flat logits, where argmax ties would prove nothing
        for p in theirs.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.15)
    theirs.generation_config.eos_token_id = None
    theirs.generation_config.pad_token_id = 0
    theirs.save_pretrained(tmp_path)
    ours = Transformer.from_pretrained(tmp_path)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (1, 7, 20, 45)]
    expected = []
    for prompt in prompts:
        with torch.no_grad():
            expected.append(theirs.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=30)[0, len(prompt):].tolist())
        assert list(generate_ids(ours, prompt, temperature=0, max_new_tokens=30, stop_token_ids=[])) == expected[-1]
    batched = generate_batch(ours, prompts, temperature=0, max_new_tokens=30, stop_token_ids=[])
    assert [r.token_ids for r in batched] == expected
