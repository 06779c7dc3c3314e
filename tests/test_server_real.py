"""A real checkpoint's shape, served for real: Qwen2.5-0.5B's exact config.json (494M parameters,
24 layers, 32k context, bf16, a 151,936-row embedding) with random weights and SmolLM2's
tokenizer (49,152 tokens, so 102,784 embedding rows have no text and must never be sampled),
imported into a store and served by `yunque serve` to 16 concurrent streams.

Cost: 30-45 s on 2 cores (building and writing 1 GB of weights, 16 x 256 prompt tokens,
16 x 64 generated).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import httpx
import pytest
import torch

from serving import LiveServer, rss_bytes

# Resident memory beyond the weights while 16 streams of 256 + 64 tokens decode: the Python,
# torch and server runtime (~300 MiB), the tokenizer, prefill activations and the KV cache
# (16 x 320 positions x 12 KiB in bf16 = 60 MiB). Measured 2026-12-02 on an AMX CPU: 521 MiB
# at the peak with bf16 weights (the streams took 10.4 s), 619 MiB with float32 ones, as a CPU
# without native bf16 runs them (25.7 s).
RSS_BOUND = 768 * 2**20


def _random_checkpoint(directory, shared_data):
    """Random bf16 weights under Qwen2.5-0.5B's own config.json, with SmolLM2's tokenizer files."""
    from yunque.model.hf import config_from_hf
    from yunque.model.hfdir import read_config
    from yunque.model.transformer import Transformer

    configs = shared_data / "configs"
    with torch.device("meta"):
        model = Transformer(config_from_hf(read_config(configs / "Qwen2.5-0.5B-Instruct")))
    model = model.to(torch.bfloat16).to_empty(device="cpu")
    model.lm_head.weight = model.tok_emb.weight  # tied, as the config says
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    model.save_pretrained(directory)
    shutil.copy(configs / "Qwen2.5-0.5B-Instruct" / "config.json", directory / "config.json")  # exactly theirs
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(configs / "SmolLM2-135M-Instruct" / name, directory / name)
    return directory


@pytest.fixture(scope="module")
def qwen(tmp_path_factory, shared_data):
    from yunque.store import entries as store

    home = tmp_path_factory.mktemp("qwen_home")
    src = _random_checkpoint(tmp_path_factory.mktemp("qwen") / "qwen-random", shared_data)
    old = os.environ.get("YUNQUE_HOME")
    os.environ["YUNQUE_HOME"] = str(home)
    try:
        store.import_model(src, "qwen-random")
    finally:
        if old is None:
            del os.environ["YUNQUE_HOME"]
        else:
            os.environ["YUNQUE_HOME"] = old
    shutil.rmtree(src)  # the store holds its own copy
    live = LiveServer(home).start()
    yield live
    live.stop()


def _stream(url: str, prompt: list[int], out: list) -> None:
    body = {"model": "qwen-random", "prompt": prompt, "max_tokens": 64, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
        assert r.status_code == 200, r.read()
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    out.append(events)


def test_a_qwen_shaped_model_serves_16_streams_within_its_weights_plus_a_bound(qwen):
    warm = httpx.post(qwen.url + "/v1/completions", json={"model": "qwen-random", "prompt": [1, 2, 3], "max_tokens": 2}, timeout=300)
    assert warm.status_code == 200, warm.text
    [loaded] = httpx.get(qwen.url + "/api/ps").json()["models"]
    weights = loaded["size"] - loaded["kv_bytes"]
    assert loaded["context_length"] == 32768 and 0.9e9 < weights / (2 if weights > 1.5e9 else 1) < 1.1e9  # bf16, or float32 without native bf16

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 49152, (256,), generator=g).tolist() for _ in range(16)]
    results: list = []
    threads = [threading.Thread(target=_stream, args=(qwen.url, p, results)) for p in prompts]
    peak, t0 = 0, time.perf_counter()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_bytes(qwen.proc.pid))
        time.sleep(0.05)
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    assert len(results) == 16
    for events in results:
        usage = events[-1]["usage"]
        assert usage["prompt_tokens"] == 256 and 1 <= usage["completion_tokens"] <= 64
        assert events[-2]["choices"][0]["finish_reason"] in ("length", "stop")
    print(f"16 streams in {seconds:.1f} s; peak RSS {peak / 2**20:.0f} MiB = weights {weights / 2**20:.0f} MiB + {(peak - weights) / 2**20:.0f} MiB")
    assert peak - weights < RSS_BOUND
    [after] = httpx.get(qwen.url + "/api/ps").json()["models"]
    assert after["requests"] == {"running": 0, "waiting": 0} and after["kv_blocks_used"] == after["kv_blocks_cached"]
