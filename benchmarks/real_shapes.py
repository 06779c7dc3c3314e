"""Decoding at real small models' shapes, yunque against llama.cpp (benchmarks/decode.py --real).

SmolLM2-135M's and Qwen2.5-0.5B's exact configs from ../shared/data/configs, random weights
(seeded), batch-1 greedy decoding of NEW tokens after a PROMPT-token prompt on the same
threads. Contenders, interleaved in rounds: yunque in float32, bf16 and int8, and llama.cpp
(the npm package node-llama-cpp, which ships prebuilt llama.cpp) on GGUF files of the same
weights in F32, BF16 and Q8_0, written here with the `gguf` package (q and k permuted for
llama.cpp's rotary layout, as its converter does for Llama models). transformers decodes
the float32 weights once, as the reference for greedy ids.

Each figure comes with its share of the memory-bandwidth roofline: a decode step reads every
weight once, so tokens/s x the weights' bytes over the memory bandwidth measured in the same
run (a sum over 1 GiB, all threads).

Needs: `pip install gguf` and `npm install node-llama-cpp` in a directory given by
`--node-modules` (default: benchmarks/.peer/node_modules, which git ignores).
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from yunque.infer.generate import generate_ids
from yunque.model.hf import config_from_hf
from yunque.model.hfdir import read_config
from yunque.model.quantize import quantize_int8
from yunque.model.transformer import Transformer

CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "configs"
SHAPES = {"SmolLM2-135M": "SmolLM2-135M-Instruct", "Qwen2.5-0.5B": "Qwen2.5-0.5B-Instruct"}
PROMPT, NEW = 64, 64
RUNNER = Path(__file__).with_name("llama_cpp_decode.mjs")


def random_model(config_dir: Path) -> Transformer:
    """The config's exact shapes in float32, weights N(0, 0.05) (wide enough that greedy picks are
    no near-ties), norms 1, seeded."""
    torch.manual_seed(0)
    model = Transformer(config_from_hf(read_config(config_dir)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.05)
    return model.eval()


# ----------------------------------------------------------------------------- GGUF


def _tokenizer_data(vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """SmolLM2's byte-level BPE vocabulary and merges, padded with unused tokens to `vocab_size`
    (Qwen2.5's embedding is larger than any tokenizer here; only ids are decoded)."""
    tok = json.loads((CONFIGS / "SmolLM2-135M-Instruct" / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    special = {a["id"] for a in tok["added_tokens"]}
    tokens = [""] * len(vocab)
    for piece, i in vocab.items():
        tokens[i] = piece
    types = [3 if i in special else 1 for i in range(len(tokens))]  # CONTROL, NORMAL
    tokens += [f"<|unused{i}|>" for i in range(len(tokens), vocab_size)]
    types += [5] * (vocab_size - len(types))  # UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    return tokens, types, merges


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotate-half rows of q or k into llama.cpp's interleaved pairs (its converter's permute)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(model: Transformer, arch: str) -> dict[str, np.ndarray]:
    """GGUF tensor names and float32 arrays, from yunque's fused qkv and gate/up layouts."""
    c = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    q_rows, kv_rows = c.n_head * c.head_dim, c.n_kv_head * c.head_dim
    out = {"token_embd.weight": sd["tok_emb.weight"], "output_norm.weight": sd["norm_f.weight"]}
    if not c.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    for i in range(c.n_layer):
        p, b = f"blocks.{i}.", f"blk.{i}."
        q, k, v = np.split(sd[p + "attn.qkv.weight"], [q_rows, q_rows + kv_rows])
        if arch == "llama":  # llama.cpp rotates llama's q/k in interleaved pairs; qwen2 in halves, as HF
            q, k = _permute(q, c.n_head), _permute(k, c.n_kv_head)
        out |= {b + "attn_q.weight": q, b + "attn_k.weight": k, b + "attn_v.weight": v}
        if c.qkv_bias:
            bq, bk, bv = np.split(sd[p + "attn.qkv.bias"], [q_rows, q_rows + kv_rows])
            out |= {b + "attn_q.bias": bq, b + "attn_k.bias": bk, b + "attn_v.bias": bv}
        gate, up = np.split(sd[p + "mlp.fc.weight"], 2)
        out |= {b + "attn_output.weight": sd[p + "attn.out.weight"], b + "attn_norm.weight": sd[p + "norm1.weight"],
                b + "ffn_norm.weight": sd[p + "norm2.weight"], b + "ffn_gate.weight": gate, b + "ffn_up.weight": up,
                b + "ffn_down.weight": sd[p + "mlp.proj.weight"]}
    return out


def write_gguf(model: Transformer, path: Path, qtype: str) -> Path:
    """The model as a GGUF file whose matrices are `qtype` ("F32", "BF16" or "Q8_0"); norms and biases stay F32."""
    import gguf

    c = model.config
    arch = "qwen2" if c.qkv_bias else "llama"
    kind = gguf.GGMLQuantizationType[qtype]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(c.max_seq_len)
    w.add_embedding_length(c.d_model)
    w.add_block_count(c.n_layer)
    w.add_feed_forward_length(c.d_ff)
    w.add_head_count(c.n_head)
    w.add_head_count_kv(c.n_kv_head)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type({"F32": gguf.LlamaFileType.ALL_F32, "BF16": gguf.LlamaFileType.MOSTLY_BF16, "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[qtype])
    tokens, types, merges = _tokenizer_data(c.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for name, array in _tensors(model, arch).items():
        if array.ndim == 2 and kind != gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, gguf.quants.quantize(array, kind), raw_dtype=kind)
        else:
            w.add_tensor(name, np.ascontiguousarray(array))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def llama_cpp(path: Path, prompt: list[int], threads: int, node_modules: Path) -> tuple[float, float, list[int]]:
    """(prompt seconds, decode seconds for NEW - 1 tokens, ids) of one warm run (after one warm-up)."""
    env = {**os.environ, "NODE_PATH": str(node_modules)}
    out = subprocess.run(["node", str(RUNNER), str(path), str(threads), str(NEW), "2", ",".join(map(str, prompt))],
                         env=env, capture_output=True, text=True, timeout=900, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["prompt_seconds"][-1], result["decode_seconds"][-1], result["ids"]


def yunque(model: Transformer, prompt: list[int]) -> tuple[float, float, list[int]]:
    stream = generate_ids(model, prompt, temperature=0, max_new_tokens=NEW, stop_token_ids=[])
    ids = list(stream)
    r = stream.result
    return r.prompt_seconds, r.generation_seconds, ids


def memory_bandwidth() -> float:
    """Bytes per second read by a sum over 1 GiB of float32 on all threads (the median of five)."""
    x = torch.ones(2**28)
    x.sum()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - t)
    return x.numel() * 4 / statistics.median(times)


def _weight_bytes(model: Transformer, per_weight: float) -> float:
    """Bytes a decode step reads: every matrix once (the LM head too), norms and biases in float32."""
    c = model.config
    matrices = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and n != "tok_emb.weight")
    if c.tie_embeddings:
        matrices += model.tok_emb.weight.numel()  # the tied LM head is read each step
    return matrices * per_weight


BYTES_PER_WEIGHT = {"float32": 4, "bf16": 2, "int8": 1 + 2 / 896, "F32": 4, "BF16": 2, "Q8_0": 34 / 32}


def transformers_ids(model: Transformer, prompt: list[int], tmp: Path) -> list[int]:
    import transformers

    path = model.save_pretrained(tmp / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        out = theirs.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=NEW, min_new_tokens=NEW,
                              eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def compare(reps: int, threads: int, node_modules: Path) -> None:
    print(f"\nReal shapes, batch 1, {PROMPT}-token prompt, {NEW} new tokens, {threads} threads, median of {reps} interleaved rounds")
    bandwidth = memory_bandwidth()
    print(f"memory bandwidth (sum over 1 GiB, all threads): {bandwidth / 1e9:.1f} GB/s")
    g = torch.Generator().manual_seed(0)
    for label, directory in SHAPES.items():
        with tempfile.TemporaryDirectory() as tmp:
            _compare_shape(label, random_model(CONFIGS / directory), Path(tmp), reps, threads, node_modules, bandwidth,
                           torch.randint(17, 49152, (PROMPT,), generator=g).tolist())


def _compare_shape(label, fp32, tmp, reps, threads, node_modules, bandwidth, prompt) -> None:
    reference = transformers_ids(fp32, prompt, tmp)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    int8 = quantize_int8(copy.deepcopy(fp32))
    ggufs = {q: write_gguf(fp32, tmp / f"{q}.gguf", q) for q in ("F32", "BF16", "Q8_0")}
    contenders = {f"yunque {n}": (lambda m=m: yunque(m, prompt)) for n, m in (("float32", fp32), ("bf16", bf16), ("int8", int8))}
    contenders |= {f"llama.cpp {q}": (lambda p=p: llama_cpp(p, prompt, threads, node_modules)) for q, p in ggufs.items()}
    runs: dict[str, list[tuple[float, float, list[int]]]] = {k: [] for k in contenders}
    for fn in list(contenders.values())[:3]:
        fn()  # warm-up (llama.cpp warms up inside each run)
    order = list(contenders.items())
    for rep in range(reps):
        for name, fn in order[rep % len(order):] + order[: rep % len(order)]:
            runs[name].append(fn())
    n_params = sum(p.numel() for p in fp32.parameters()) / 1e6
    print(f"\n{label} ({n_params:.0f}M parameters, vocabulary {fp32.config.vocab_size}):")
    print("| contender | decode tok/s | prompt tok/s | roofline share | vs llama.cpp | greedy ids == transformers |")
    print("|---|---:|---:|---:|---:|---|")
    peers = {"float32": "F32", "bf16": "BF16", "int8": "Q8_0"}
    rate = {name: (NEW - 1) / statistics.median(r[1] for r in rs) for name, rs in runs.items()}
    for name, rs in runs.items():
        kind = name.split()[-1]
        prompt_rate = PROMPT / statistics.median(r[0] for r in rs)
        roof = bandwidth / _weight_bytes(fp32, BYTES_PER_WEIGHT[kind])
        peer = f"llama.cpp {peers[kind]}" if kind in peers else None
        versus = f"{rate[name] / rate[peer]:.2f}x" if peer else ""
        same = rs[-1][2] == reference
        matched = next((i for i, (a, b) in enumerate(zip(rs[-1][2], reference)) if a != b), NEW)
        print(f"| {name} | {rate[name]:.1f} | {prompt_rate:.0f} | {rate[name] / roof:.0%} | {versus} | {same if same else f'first {matched}'} |")
