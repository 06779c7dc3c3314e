"""LoRA adapters against the real `peft`: what yunque saves PEFT loads with the same logits on the
transformers model, and what PEFT saves yunque loads with the same logits; merging keeps them."""

import json

import pytest
import torch

import peers
from test_hf import assert_logits_close, hf_model, random_batches
from yunque.errors import YunqueError
from yunque.infer.generate import generate_ids
from yunque.model.lora import LoraSettings, add_lora, adapters, load_adapter, merge_lora, save_adapter
from yunque.model.transformer import Transformer

peft = peers.require("peft")
transformers = peers.require("transformers")

ALL_TARGETS = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qwen2": ("q_proj", "v_proj", "down_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
}


def _pair(name, tmp_path):
    theirs = hf_model(name)
    theirs.save_pretrained(tmp_path / "base")
    return theirs, Transformer.from_pretrained(tmp_path / "base").eval()


def _randomize(params):
    """Non-zero adapters: a fresh LoRA's B is zero, which would make any mapping look right."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _their_logits(model, idx):
    with torch.no_grad():
        return model(idx).logits


@pytest.mark.parametrize("name", list(ALL_TARGETS))
def test_an_adapter_yunque_trains_loads_in_peft_with_the_same_logits(name, tmp_path):
    theirs, ours = _pair(name, tmp_path)
    add_lora(ours, LoraSettings(r=4, alpha=8, dropout=0.0, targets=ALL_TARGETS[name]))
    trainable = [p for p in ours.parameters() if p.requires_grad]
    lora = {id(p) for m in adapters(ours) for p in [*m.lora_A, *m.lora_B]}
    assert trainable and {id(p) for p in trainable} == lora  # only the adapters train
    _randomize(trainable)
    base_logits = _their_logits(theirs, random_batches(101)[0])
    save_adapter(ours, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["target_modules"] == sorted(ALL_TARGETS[name])
    adapted = peft.PeftModel.from_pretrained(theirs, tmp_path / "adapter").eval()
    n_theirs = sum(p.numel() for n, p in adapted.named_parameters() if "lora_" in n)
    assert n_theirs == sum(p.numel() for p in trainable)  # the same number of trainable parameters
    for idx in random_batches(101):
        with torch.no_grad():
            assert_logits_close(ours(idx), _their_logits(adapted, idx))
    assert (_their_logits(adapted, random_batches(101)[0]) - base_logits).abs().max() > 0.1  # the adapter changes the answer


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_an_adapter_peft_makes_loads_in_yunque_with_the_same_logits(name, tmp_path):
    theirs, ours = _pair(name, tmp_path)
    targets = ["q_proj", "v_proj", "up_proj"] if name == "llama" else ["c_attn", "c_fc"]
    adapted = peft.get_peft_model(theirs, peft.LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, target_modules=targets,
                                                         fan_in_fan_out=name == "gpt2", task_type="CAUSAL_LM"))
    _randomize([p for n, p in adapted.named_parameters() if "lora_B" in n])
    adapted.save_pretrained(tmp_path / "peft-adapter")
    load_adapter(ours, tmp_path / "peft-adapter")
    for idx in random_batches(101):
        with torch.no_grad():
            assert_logits_close(ours(idx), _their_logits(adapted.eval(), idx))


def test_merging_keeps_the_adapted_outputs_and_the_decode_step_sees_adapters(tmp_path):
    _, ours = _pair("llama", tmp_path)
    add_lora(ours, LoraSettings(r=2, alpha=4, dropout=0.0, targets=ALL_TARGETS["llama"]))
    _randomize([p for p in ours.parameters() if p.requires_grad])
    idx = random_batches(101)[1]
    with torch.no_grad():
        adapted = ours(idx)
    prompt = idx[0].tolist()
    decoded = list(generate_ids(ours, prompt, temperature=0, max_new_tokens=6, stop_token_ids=[]))  # unmerged, through the engine's step
    merge_lora(ours)
    assert not adapters(ours)
    with torch.no_grad():
        assert_logits_close(ours(idx), adapted)
    assert list(generate_ids(ours, prompt, temperature=0, max_new_tokens=6, stop_token_ids=[])) == decoded


def test_bad_adapters_and_targets_are_one_sentence_errors(tmp_path):
    _, ours = _pair("llama", tmp_path)
    with pytest.raises(YunqueError, match=r"called c_attn; LoRA targets here are .*q_proj"):
        add_lora(ours, LoraSettings(targets=("c_attn",)))
    with pytest.raises(YunqueError, match="rank of at least 1"):
        LoraSettings(r=0)
    with pytest.raises(YunqueError, match="not a LoRA adapter directory"):
        load_adapter(ours, tmp_path)
    # An adapter trained on another base: GPT-2's modules do not exist in a Llama model.
    _, gpt2 = _pair("gpt2", tmp_path / "g")
    add_lora(gpt2, LoraSettings(targets=("c_attn",)))
    save_adapter(gpt2, tmp_path / "gpt2-adapter")
    with pytest.raises(YunqueError, match="called c_attn"):
        load_adapter(ours, tmp_path / "gpt2-adapter")
    # Same module names, other shapes: an adapter made by PEFT on a wider Llama.
    from test_hf import SMALL

    wider = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**SMALL, "hidden_size": 48}, num_key_value_heads=2))
    peft.get_peft_model(wider, peft.LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM")).save_pretrained(tmp_path / "wider")
    _, fresh = _pair("llama", tmp_path / "f")
    with pytest.raises(YunqueError, match=r"made for another base model: .*q_proj.lora_A.weight is \(4, 48\), this model needs \(4, 32\)"):
        load_adapter(fresh, tmp_path / "wider")


def test_only_the_adapters_train_and_they_fit_a_batch(tmp_path):
    _, ours = _pair("llama", tmp_path)
    before = {n: p.detach().clone() for n, p in ours.named_parameters()}
    add_lora(ours, LoraSettings(r=4, alpha=8, dropout=0.05, targets=ALL_TARGETS["llama"]))
    ours.train()
    x, y = random_batches(101)[1][:, :-1], random_batches(101)[1][:, 1:]
    opt = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(30):
        _, loss = ours(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    frozen = {n.replace(".base.", "."): p for n, p in ours.named_parameters() if not p.requires_grad}
    assert frozen.keys() == before.keys() and all(torch.equal(p, before[n]) for n, p in frozen.items())
    merge_lora(ours)
    changed = [n for n, p in ours.named_parameters() if not torch.equal(p, before[n])]
    assert changed and all(n.endswith(("qkv.weight", "out.weight", "fc.weight", "proj.weight")) for n in changed)


def test_yunque_merge_writes_a_model_transformers_loads_with_the_adapted_logits(tmp_path):
    import subprocess
    import sys

    theirs, _ = _pair("llama", tmp_path)
    from serving import training_text
    from yunque.text.tokenizer import Tokenizer

    Tokenizer.train_from_iterator([training_text()], 300, show_progress=False).save_pretrained(tmp_path / "base")
    adapted = peft.get_peft_model(theirs, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "down_proj"],
                                                         task_type="CAUSAL_LM"))
    _randomize([p for n, p in adapted.named_parameters() if "lora_B" in n])
    adapted.save_pretrained(tmp_path / "adapter")
    run = lambda *a: subprocess.run([sys.executable, "-m", "yunque.cli", "merge", *map(str, a)], capture_output=True, text=True, timeout=120)  # noqa: E731
    r = run(tmp_path / "base", tmp_path / "adapter", tmp_path / "merged")
    assert r.returncode == 0, r.stderr
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the base's other files, as they are
        assert (tmp_path / "merged" / name).read_bytes() == (tmp_path / "base" / name).read_bytes()
    for idx in random_batches(101):
        assert_logits_close(_their_logits(merged, idx), _their_logits(adapted.eval(), idx))
    r = run(tmp_path / "base", tmp_path / "adapter", tmp_path / "merged")
    assert r.returncode == 1 and "not an empty directory" in " ".join(r.stderr.split())
    _, gpt2 = _pair("gpt2", tmp_path / "g")
    add_lora(gpt2, LoraSettings(targets=("c_attn",)))
    save_adapter(gpt2, tmp_path / "gpt2-adapter")
    r = run(tmp_path / "base", tmp_path / "gpt2-adapter", tmp_path / "other")
    assert r.returncode == 1 and "called c_attn" in r.stderr and "Traceback" not in r.stderr and not (tmp_path / "other").exists()


def test_a_modelfile_adapter_makes_a_store_model_served_as_merged(tmp_path, monkeypatch):
    """`FROM base` + `ADAPTER ./dir`: the entry links the base's weights and carries the adapter;
    its ID differs, `show` and the runner honour it, export gives the merged model or the adapter."""
    import os

    from serving import training_text
    from yunque.server.runner import load_runner
    from yunque.store import entries as store
    from yunque.store.modelfile import render_modelfile
    from yunque.text.tokenizer import Tokenizer

    monkeypatch.setenv("YUNQUE_HOME", str(tmp_path / "home"))
    theirs, ours = _pair("llama", tmp_path)
    Tokenizer.train_from_iterator([training_text()], 300, show_progress=False).save_pretrained(tmp_path / "base")
    adapted = peft.get_peft_model(theirs, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "up_proj"], task_type="CAUSAL_LM"))
    _randomize([p for n, p in adapted.named_parameters() if "lora_B" in n])
    adapted.save_pretrained(tmp_path / "lora")
    store.import_model(tmp_path / "base", "base")
    (tmp_path / "Modelfile").write_text("FROM base\nADAPTER ./lora\nSYSTEM Be brief.\n")
    entry = store.create("adapted", (tmp_path / "Modelfile").read_text(), base_dir=tmp_path)
    base = store.get("base")
    assert os.path.samefile(entry.path / "model.safetensors", base.path / "model.safetensors")  # weights not copied
    assert (entry.path / "adapter" / "adapter_model.safetensors").is_file() and entry.digest != base.digest
    assert "ADAPTER " in render_modelfile(store.get("adapted").settings)
    runner = load_runner(store.get("adapted"))
    idx = random_batches(101)[1]
    with torch.no_grad():
        assert_logits_close(runner.model.float()(idx), _their_logits(adapted.eval(), idx))
    runner.scheduler.shutdown()
    merged = store.export_model("adapted", tmp_path / "merged")
    assert_logits_close(_their_logits(transformers.AutoModelForCausalLM.from_pretrained(merged).eval(), idx), _their_logits(adapted, idx))
    only = store.export_model("adapted", tmp_path / "only", adapter_only=True)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in only.iterdir()} and not (only / "model.safetensors").exists()
    store.create("copy", "FROM adapted\n")  # a model made from an adapted one keeps its adapter
    assert (store.get("copy").path / "adapter" / "adapter_config.json").is_file()
    with pytest.raises(YunqueError, match="already carries an adapter"):
        store.create("twice", "FROM adapted\nADAPTER ./lora\n", base_dir=tmp_path)
    _, gpt2 = _pair("gpt2", tmp_path / "g")
    add_lora(gpt2, LoraSettings(targets=("c_attn",)))
    save_adapter(gpt2, tmp_path / "gpt2-adapter")
    with pytest.raises(YunqueError, match="called c_attn"):
        store.create("wrong", "FROM base\nADAPTER ./gpt2-adapter\n", base_dir=tmp_path)
    assert "wrong:latest" not in [str(e.name) for e in store.list_models()]


TOKEN_ROWS = {  # model -> yunque's token-row settings and the trainable_token_indices PEFT writes for them
    "llama-tied": ((("", (3, 7, 50)),), [3, 7, 50]),
    "gpt2": ((("", (0, 99)),), [0, 99]),
    "llama": ((("", (3, 7)), ("lm_head", (3, 7))), {"embed_tokens": [3, 7], "lm_head": [3, 7]}),
}


@pytest.mark.parametrize("name", list(TOKEN_ROWS))
def test_trainable_token_rows_match_peft_both_ways_and_merge(name, tmp_path):
    """Rows of the embedding (and of an untied head) train beside the adapters, in PEFT's
    trainable-tokens format: PEFT loads them with yunque's logits, yunque loads PEFT's, merge keeps them."""
    tokens, peft_indices = TOKEN_ROWS[name]
    theirs, ours = _pair(name, tmp_path)
    before = {n: p.detach().clone() for n, p in ours.named_parameters()}
    add_lora(ours, LoraSettings(r=2, alpha=4, dropout=0.0, targets=ALL_TARGETS[name.removesuffix("-tied")][:1], tokens=tokens))
    trainable = [p for p in ours.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == sum(p.numel() for m in adapters(ours) for p in [*m.lora_A, *m.lora_B]) + sum(
        len(ids) for _, ids in tokens) * ours.config.d_model
    _randomize(trainable)
    save_adapter(ours, tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["trainable_token_indices"] == peft_indices
    adapted = peft.PeftModel.from_pretrained(theirs, tmp_path / "adapter").eval()
    for idx in random_batches(101):
        idx[:, ::2] = tokens[0][1][0]  # the trained rows are read as inputs and predicted as outputs
        with torch.no_grad():
            adapted_logits = ours(idx)
            assert_logits_close(adapted_logits, _their_logits(adapted, idx))
    adapted.save_pretrained(tmp_path / "resaved")
    _, fresh = _pair(name, tmp_path / "fresh")
    load_adapter(fresh, tmp_path / "resaved")  # what PEFT writes, back in yunque
    merge_lora(fresh)
    assert not any("token" in type(m).__name__.lower() for m in fresh.modules())
    with torch.no_grad():
        assert_logits_close(fresh(idx), adapted_logits)
    changed = {n for n, p in fresh.named_parameters() if not torch.equal(p, before[n])}
    assert {"tok_emb.weight"} <= changed
