import asyncio
import json
import threading

import pytest
import torch

from yunque.model.config import ModelConfig
from yunque.infer.batch import GenerationResult
from yunque.infer.generate import generate, generate_batch, generate_ids
from yunque.errors import YunqueError
from yunque.model.transformer import Transformer
from yunque.infer.engine import Engine, QueueFullError
from yunque.infer.sampling import SamplingParams
from yunque.text.tokenizer import Tokenizer

TEXT = (
    "En un lugar de la Mancha, de cuyo nombre no quiero acordarme, no ha mucho tiempo que vivía un hidalgo. "
    "First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. ¿Qué? ¡Sí! café, niño 🙂 "
) * 10

LLAMA = dict(positions="rope", norm="rmsnorm", mlp="swiglu", qkv_bias=False, attn_out_bias=False, mlp_bias=False,
             norm_bias=False, tie_embeddings=False, n_kv_head=2)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train_from_iterator([TEXT], 400, show_progress=False)


def tiny(vocab_size: int, family: dict = LLAMA, **kw) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**dict(vocab_size=vocab_size, n_layer=2, n_head=4, d_model=32, d_ff=64, max_seq_len=96, init_std=0.3),
                         **family, **kw})
    return Transformer(cfg).eval()


@pytest.fixture(scope="module")
def model(tok) -> Transformer:
    return tiny(tok.vocab_size)


def naive_greedy(model, ids, n):
    """Recompute the whole sequence every step: the reference the cached engine must match."""
    x = torch.tensor([ids])
    out = []
    with torch.no_grad():
        for _ in range(n):
            t = int(model(x)[0, -1].argmax())
            out.append(t)
            x = torch.cat([x, torch.tensor([[t]])], dim=1)
    return out


@pytest.mark.parametrize("family", [LLAMA, dict(positions="learned", norm="layernorm", mlp="gelu")])
def test_cached_greedy_equals_recomputing_every_step(family):
    model = tiny(300, family)
    ids = torch.randint(0, 300, (11,)).tolist()
    stream = generate_ids(model, ids, temperature=0, max_new_tokens=25, stop_token_ids=[])
    assert list(stream) == naive_greedy(model, ids, 25)
    r = stream.result
    assert (r.finish_reason, r.prompt_tokens, r.generated_tokens) == ("length", 11, 25)
    assert r.prompt_seconds > 0 and r.generation_seconds > 0 and r.tokens_per_second > 0


def test_batch_of_different_lengths_equals_each_alone(model):
    prompts = [torch.randint(0, 300, (n,)).tolist() for n in (3, 17, 8, 1)]
    results = generate_batch(model, prompts, temperature=0, max_new_tokens=12, stop_token_ids=[])
    for prompt, r in zip(prompts, results):
        assert r.token_ids == naive_greedy(model, prompt, 12)


def test_long_prompts_are_prefilled_in_chunks(model, monkeypatch):
    import yunque.infer.batch

    monkeypatch.setattr(yunque.infer.batch, "_LOGITS_BUDGET", 5 * model.config.vocab_size)  # 2 rows x 2 tokens per forward
    prompts = [list(range(1, 12)), list(range(20, 29))]
    results = generate_batch(model, prompts, temperature=0, max_new_tokens=6, stop_token_ids=[])
    assert [r.token_ids for r in results] == [naive_greedy(model, p, 6) for p in prompts]


def test_text_stream_is_utf8_safe_and_matches_decode(model, tok):
    stream = generate(model, tok, "¿Qué café", temperature=1.0, seed=1, max_new_tokens=40, stop_token_ids=[])
    pieces = list(stream)
    assert all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == tok.decode(stream.result.token_ids) == stream.result.text


def test_stop_string_ends_generation_and_is_not_emitted(model, tok):
    full = generate(model, tok, "hear me", temperature=0, max_new_tokens=30, stop_token_ids=[])
    text = "".join(full)
    stop = text[10:13]
    stream = generate(model, tok, "hear me", temperature=0, max_new_tokens=30, stop_token_ids=[], stop=[stop, "never"])
    assert "".join(stream) == text[: text.find(stop)]
    assert stream.result.finish_reason == "stop"


def test_stop_token_ends_generation_and_is_not_yielded(model):
    prompt = [5, 6, 7]
    ref = naive_greedy(model, prompt, 10)
    stream = generate_ids(model, prompt, temperature=0, max_new_tokens=10, stop_token_ids=[ref[4]])
    assert list(stream) == ref[: ref.index(ref[4])]
    assert stream.result.finish_reason == "stop" and stream.result.generated_tokens == ref.index(ref[4]) + 1


def test_seed_reproducible(model):
    a = list(generate_ids(model, [1, 2, 3], seed=7, max_new_tokens=20, top_p=0.9))
    b = list(generate_ids(model, [1, 2, 3], seed=7, max_new_tokens=20, top_p=0.9))
    c = list(generate_ids(model, [1, 2, 3], seed=8, max_new_tokens=20, top_p=0.9))
    assert a == b != c


def test_prompt_longer_than_context_is_an_error_or_truncated_on_request(model):
    long = list(range(1, 201))
    with pytest.raises(YunqueError, match="truncate=True"):
        generate_ids(model, long, max_new_tokens=8)
    stream = generate_ids(model, long, max_new_tokens=8, truncate=True, temperature=0)
    ids = list(stream)
    keep = 96 - 8
    assert stream.result.prompt_truncated and stream.result.prompt_tokens == keep
    assert ids == naive_greedy(model, long[-keep:], 8)


def test_context_fills_up_with_finish_reason_length(model):
    stream = generate_ids(model, list(range(1, 91)), temperature=0, max_new_tokens=50, stop_token_ids=[])
    assert len(list(stream)) == 96 - 90 + 1  # the last token fills the context and is not fed back
    assert stream.result.finish_reason == "length"


def test_user_mistakes_are_yunque_errors(model, tok):
    with pytest.raises(YunqueError, match="vocabulary"):
        generate_ids(model, [10_000])
    with pytest.raises(YunqueError, match="empty"):
        generate_ids(model, [])
    with pytest.raises(YunqueError, match="need a tokenizer"):
        generate_ids(model, [1], stop=["x"])
    with pytest.raises(YunqueError, match="top_p"):
        generate(model, tok, "hi", top_p=2)


def test_closing_a_stream_early_reports_cancelled(model):
    stream = generate_ids(model, [1, 2], max_new_tokens=50, stop_token_ids=[])
    next(stream)
    stream.close()
    assert stream.result.finish_reason == "cancelled"


# ---------------------------------------------------------------------- continuous batching


MIXED = [
    dict(temperature=0),
    dict(temperature=0, repetition_penalty=1.5, presence_penalty=0.5),
    dict(seed=3, top_k=20, temperature=0.8),
    dict(seed=4, min_p=0.1, frequency_penalty=0.3),
]


def alone(model, prompt, params):
    return list(generate_ids(model, prompt, max_new_tokens=15, stop_token_ids=[], **params))


def test_concurrent_requests_equal_each_alone(model):
    prompts = [[3, 4, 5], list(range(10, 40)), [7], list(range(50, 60))] * 2
    params = MIXED * 2
    expected = [alone(model, p, s) for p, s in zip(prompts, params)]
    with Engine(model, max_batch=3) as engine:
        results = [None] * len(prompts)

        def client(i):
            handle = engine.submit(prompts[i], max_new_tokens=15, stop_token_ids=[], **params[i])
            results[i] = [t for chunk in handle for t in chunk.token_ids]

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == expected


def test_join_and_leave_mid_decode(model):
    with Engine(model, max_batch=2) as engine:
        long = engine.submit([1, 2, 3], temperature=0, max_new_tokens=40, stop_token_ids=[])
        it = iter(long)
        first = [next(it).token_ids[0] for _ in range(5)]
        short = engine.submit([9, 8], temperature=0, max_new_tokens=4, stop_token_ids=[])
        late = engine.submit([4, 4, 4, 4], seed=5, max_new_tokens=6, stop_token_ids=[])  # waits for `short`'s slot
        rest = [chunk.token_ids[0] for chunk in it]
        assert first + rest == naive_greedy(model, [1, 2, 3], 40)
        assert [t for c in short for t in c.token_ids] == naive_greedy(model, [9, 8], 4)
        assert [t for c in late for t in c.token_ids] == alone(model, [4, 4, 4, 4], dict(seed=5))[:6]
        assert late.result.queued_seconds > 0 and short.result.finish_reason == "length"


def test_cancel_frees_the_slot(model):
    with Engine(model, max_batch=1) as engine:
        hog = engine.submit([1], max_new_tokens=10_000, stop_token_ids=[], truncate=True)
        queued = engine.submit([2], temperature=0, max_new_tokens=5, stop_token_ids=[])
        next(iter(hog))
        assert engine.active == 1 and engine.waiting == 1
        hog.cancel()
        assert [t for c in queued for t in c.token_ids] == naive_greedy(model, [2], 5)
        assert hog.result.finish_reason == "cancelled" and hog.result.generated_tokens < 95
        waiting = engine.submit([3], max_new_tokens=5)
        waiting.cancel()  # cancelling a queued (or already finished) request is safe
        list(waiting)
        assert waiting.result.finish_reason in ("cancelled", "length", "stop")
        assert engine.active == 0


def test_a_row_with_penalties_leaves_its_batch_outside_the_decode_step(model):
    """The engine cancels and preempts between steps, outside inference mode: moving the last
    row's penalty state (an inference tensor) into the freed slot must work there (a cancel that
    landed between two steps once failed every request of the batch)."""
    from yunque.infer.batch import Batch, make_request

    params = SamplingParams(temperature=0, repetition_penalty=1.3, frequency_penalty=0.4, max_new_tokens=8, stop_token_ids=[])
    results = []
    reqs = [make_request(model, None, p, params, 96, lambda c: None, results.append) for p in ([1, 2, 3, 4, 5], [9, 8, 7], [4, 4])]
    batch = Batch(model, 3)
    batch.add(*reqs)
    assert batch.active[0] is reqs[0]
    batch.remove(reqs[0], "cancelled")
    batch.preempt(batch.active[0])
    while batch.active:
        batch.step()
    batch.add(reqs[1] if reqs[1].preemptions else reqs[2])
    while batch.active:
        batch.step()
    assert sorted(r.finish_reason for r in results) == ["cancelled", "length", "length"]
    for req in reqs[1:]:
        assert req.generated == alone(model, req.prompt_ids, dict(temperature=0, repetition_penalty=1.3, frequency_penalty=0.4))[:8]


def test_queue_full_is_a_clear_error(model):
    with Engine(model, max_batch=1, max_queue=1) as engine:
        running = engine.submit([1], max_new_tokens=90, stop_token_ids=[])
        next(iter(running))  # it holds the only slot now
        engine.submit([2], max_new_tokens=5)
        with pytest.raises(QueueFullError, match="busy"):
            engine.submit([3], max_new_tokens=5)


def test_async_iteration_does_not_block_the_event_loop(model, tok):
    prompts = ["En un lugar", "hear me speak", "café"]
    expected = ["".join(generate(model, tok, p, temperature=0, max_new_tokens=20)) for p in prompts]

    async def main():
        ticks = 0
        done = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0)

        async def consume(handle):
            return "".join([chunk.text async for chunk in handle]), handle.result

        with Engine(model, tok, max_batch=2) as engine:
            t = asyncio.create_task(ticker())
            outs = await asyncio.gather(*(consume(engine.submit(p, temperature=0, max_new_tokens=20)) for p in prompts))
            done.set()
            await t
        return outs, ticks

    outs, ticks = asyncio.run(main())
    assert [text for text, _ in outs] == expected
    assert all(isinstance(r, GenerationResult) and r.text == text for text, r in outs)
    assert ticks > 10


def test_shutdown_cancels_running_work_and_refuses_new(model):
    engine = Engine(model, max_batch=1)
    handle = engine.submit([1], max_new_tokens=90, stop_token_ids=[])
    engine.shutdown()
    list(handle)
    assert handle.result.finish_reason == "cancelled"
    with pytest.raises(YunqueError, match="shut down"):
        engine.submit([1])


def test_cli_generate_streams_and_reports_speed(model, tok, tmp_path):
    from typer.testing import CliRunner

    from yunque.cli.app import app

    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    expected = "".join(generate(model, tok, "hear me", temperature=0, max_new_tokens=12))
    runner = CliRunner()
    res = runner.invoke(app, ["generate", str(tmp_path / "m"), "-", "-t", "0", "-n", "12", "--verbose"], input="hear me")
    assert res.exit_code == 0, res.output
    assert res.stdout == expected + "\n"
    assert "tokens/s" in res.stderr and "12 generated" in res.stderr
    stop = expected[5:7]
    res = runner.invoke(app, ["generate", str(tmp_path / "m"), "hear me", "-t", "0", "-n", "12", "--stop", stop, "--stop", "\\n"])
    cut = min(i for i in (expected.find(stop), expected.find("\n")) if i >= 0)  # "\\n" on the command line is a newline
    assert res.exit_code == 0 and res.stdout == expected[:cut] + "\n"
    res = runner.invoke(app, ["generate", str(tmp_path / "m"), "x", "--int8", "-n", "3", "--seed", "1"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["generate", str(tmp_path / "m"), "JSON:", "--json", "-n", "60", "--seed", "1", "--verbose"])
    assert res.exit_code == 0 and res.stdout.startswith("{"), res.output
    if "finish reason: stop" in res.stderr:
        assert isinstance(json.loads(res.stdout), dict)


def test_cli_generate_errors_are_one_sentence(tmp_path):
    import subprocess
    import sys

    from typer.testing import CliRunner

    from yunque.cli.app import app

    res = subprocess.run([sys.executable, "-m", "yunque.cli", "generate", str(tmp_path / "nope"), "hi"], capture_output=True, text=True)
    assert res.returncode == 1 and "does not exist" in " ".join(res.stderr.split()) and "Traceback" not in res.stderr
    res = CliRunner().invoke(app, ["generate", str(tmp_path), "hi", "--top-p", "3"])  # refused before loading anything
    assert isinstance(res.exception, YunqueError) and "top_p must be" in str(res.exception)


def test_a_failing_step_fails_its_requests_and_the_engine_keeps_serving(model):
    with Engine(model, max_batch=2) as engine:
        step = engine._batch._step

        def broken(*args, **kwargs):
            engine._batch._step = step  # fail once
            raise RuntimeError("boom")

        engine._batch._step = broken
        handle = engine.submit([1, 2], max_new_tokens=5, stop_token_ids=[])
        with pytest.raises(RuntimeError, match="boom"):
            list(handle)
        after = engine.submit([1, 2], temperature=0, max_new_tokens=5, stop_token_ids=[])
        assert [t for c in after for t in c.token_ids] == naive_greedy(model, [1, 2], 5)


def test_extreme_sampling_values_are_refused_before_they_reach_a_batch(model):
    for bad in (dict(temperature=1e-300), dict(repetition_penalty=1e-300), dict(temperature=float("inf")), dict(top_p=float("nan"))):
        with pytest.raises(YunqueError, match="Invalid sampling setting"):
            SamplingParams(**bad)


@pytest.mark.parametrize("poison", [dict(temperature=1e-300), dict(repetition_penalty=1e-300, temperature=0.7)])
def test_one_poisoned_request_fails_alone_and_its_15_batch_mates_finish(model, poison):
    """Values that slipped past validation (set after it) make one row's draw fail: that request
    ends with an error, and the other 15, decoded in the same batch, draw what they draw alone."""
    prompts = [list(range(3 + i, 9 + i)) for i in range(16)]
    settings = [MIXED[i % len(MIXED)] for i in range(16)]
    expected = [alone(model, p, s) for p, s in zip(prompts, settings)]
    with Engine(model, max_batch=16) as engine:
        handles = []
        for i, (prompt, extra) in enumerate(zip(prompts, settings)):
            params = SamplingParams(max_new_tokens=15, stop_token_ids=[], **extra)
            if i == 5:
                for name, value in poison.items():
                    setattr(params, name, value)  # past validation, as a bug elsewhere might leave it
            handles.append(engine.submit(prompt, params))
        results = []
        for i, handle in enumerate(handles):
            if i == 5:
                with pytest.raises(YunqueError, match="Sampling failed for this request"):
                    list(handle)
                continue
            results.append([t for chunk in handle for t in chunk.token_ids])
    assert results == expected[:5] + expected[6:]


def test_padded_vocabulary_rows_are_never_sampled(tok):
    """Checkpoints pad their embedding past the tokenizer (Qwen2.5: 151,936 rows for 151,665
    tokens). Here the padding carries all the signal, so an unguarded argmax would pick it; every
    path must still emit only ids the tokenizer can decode."""
    model = tiny(tok.vocab_size + 37)
    with torch.no_grad():
        model.lm_head.weight[: tok.vocab_size] = 0
        model.lm_head.weight[tok.vocab_size :] *= 50
        assert int(model(torch.tensor([[1, 2, 3]]))[0, -1].argmax()) >= tok.vocab_size
    for settings in (dict(temperature=0), dict(temperature=1.0, seed=1), dict(temperature=0.7, repetition_penalty=1.3, seed=2)):
        stream = generate(model, tok, "hola", max_new_tokens=20, stop_token_ids=[], **settings)
        text = "".join(stream)
        ids = stream.result.token_ids
        assert len(ids) == 20 and max(ids) < tok.vocab_size and text == tok.decode(ids)
    [batched] = generate_batch(model, ["hola"], tokenizer=tok, temperature=1.0, seed=3, max_new_tokens=20, stop_token_ids=[])
    assert max(batched.token_ids) < tok.vocab_size
    with Engine(model, tok, max_batch=2) as engine:
        handle = engine.submit("hola", temperature=1.0, seed=4, max_new_tokens=20, stop_token_ids=[])
        assert max(t for chunk in handle for t in chunk.token_ids) < tok.vocab_size


def test_logprobs_are_the_models_own_and_come_with_each_chunk(model):
    """Each token's logprob (and top alternatives) equal a log-softmax of the model's logits
    recomputed from scratch, whatever the sampling settings; batch mates that did not ask get none."""
    ids = [5, 6, 7, 8]
    with Engine(model, max_batch=2) as engine:
        asked = engine.submit(ids, temperature=0.9, seed=3, top_k=20, max_new_tokens=8, stop_token_ids=[], logprobs=3)
        plain = engine.submit(ids, temperature=0, max_new_tokens=8, stop_token_ids=[])
        chunks = list(asked)
        assert all(c.logprobs is None for c in plain)
    got = [lp for c in chunks for lp in c.logprobs]
    assert [lp.token_id for lp in got] == asked.result.token_ids and asked.result.logprobs == got
    x = torch.tensor([ids + asked.result.token_ids])
    with torch.no_grad():
        reference = torch.log_softmax(model(x)[0].float(), dim=-1)
    for step, lp in enumerate(got):
        row = reference[len(ids) - 1 + step]
        assert lp.logprob == pytest.approx(float(row[lp.token_id]), abs=1e-4)
        top = row.topk(3)
        assert [t for t, _ in lp.top] == top.indices.tolist()
        assert [v for _, v in lp.top] == pytest.approx(top.values.tolist(), abs=1e-4)
    with pytest.raises(YunqueError, match="logprobs"):
        SamplingParams(logprobs=21)


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="reads resident memory from /proc")
def test_a_128k_context_engine_commits_kv_memory_only_for_the_tokens_in_use(shared_data):
    """Llama-3.2-1B's exact attention (32 heads, 8 KV heads of 64, 128k context, llama3 RoPE),
    2 layers and a small MLP and vocabulary so it builds in a second: 32 slots at full context
    would preallocate 34 GB of KV cache; resident memory must follow the tokens in use instead,
    and go back when the requests end."""
    import dataclasses

    from yunque.model.hf import config_from_hf
    from yunque.model.hfdir import read_config

    real = config_from_hf(read_config(shared_data / "configs" / "Llama-3.2-1B-Instruct"))
    cfg = dataclasses.replace(real, n_layer=2, d_ff=256, vocab_size=1024, bos_token_id=None, eos_token_id=None)
    assert (cfg.max_seq_len, cfg.n_kv_head, cfg.head_dim) == (131072, 8, 64)
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    before = _rss()
    with Engine(model, max_batch=32) as engine:
        per_position = 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * 4  # keys and values, float32
        assert 32 * cfg.max_seq_len * per_position > 30e9  # what preallocating would have taken
        assert _rss() - before < 256 * 2**20  # planning buffers, page tables: not the cache
        prompts = [list(range(1 + i, 301 + i)) for i in range(16)]
        handles = [engine.submit(p, temperature=0, max_new_tokens=40, stop_token_ids=[]) for p in prompts]
        seen = []
        for h in handles:
            for _ in h:
                seen.append((engine.kv_bytes, _rss() - before))
        assert max(kv for kv, _ in seen) <= 16 * 340 * per_position
        # What stays is the prompt cache: each finished row, parked for a prompt that starts the same way.
        assert engine.kv_bytes == 16 * 339 * per_position and engine.kv_blocks_used == engine.kv_blocks_cached == 16 * 22
        assert max(rss for _, rss in seen) < 512 * 2**20, max(rss for _, rss in seen)
    assert all(h.result.generated_tokens == 40 for h in handles)


def test_a_kv_budget_holds_blocks_for_the_tokens_in_use_and_preempts_when_they_run_out(model):
    """Requests hold blocks of 16 positions for what they have written, so more run at once than
    their worst case allows; when the blocks run out the latest to arrive is preempted and
    prefilled again later, and every answer (greedy, seeded, with penalties) equals the one it
    gets alone. What could never fit is refused; cancelling gives everything back."""
    from yunque.infer.budget import BLOCK, KVBudget

    per_position = 2 * model.config.n_layer * model.config.n_kv_head * model.config.head_dim * 4
    budget = KVBudget(5 * BLOCK * per_position)  # five blocks; each request ends at 10 + 30 positions = 3 blocks
    prompts = [list(range(3 + i, 13 + i)) for i in range(6)]
    params = MIXED + MIXED[:2]
    expected = [list(generate_ids(model, p, max_new_tokens=30, stop_token_ids=[], **s)) for p, s in zip(prompts, params)]
    with Engine(model, max_batch=6, kv_budget=budget) as engine:
        handles = [engine.submit(p, max_new_tokens=30, stop_token_ids=[], **s) for p, s in zip(prompts, params)]
        results, most_active, most_blocks = [], 0, 0
        for h in handles:
            tokens = []
            for chunk in h:
                tokens += chunk.token_ids
                most_active, most_blocks = max(most_active, engine.active), max(most_blocks, engine.kv_blocks_used)
            results.append(tokens)
        # Reserving the worst case (3 blocks each) would run one at a time; by use, three start.
        assert results == expected and most_active >= 3 and most_blocks <= 5
        block = BLOCK * per_position
        assert sum(h.request.preemptions for h in handles) > 0 and engine.active == 0
        # Only the prompt cache's parked rows still hold blocks (given up when a request needs them).
        assert budget.used == engine.kv_blocks_used * block == engine.kv_blocks_cached * block > 0
        assert engine.kv_blocks_total == 5
        with pytest.raises(YunqueError, match=r"KV cache, more than the server's budget of .* --kv-budget"):
            engine.submit(list(range(10)), temperature=0, max_new_tokens=90, stop_token_ids=[])
        cancelled = engine.submit(prompts[0], temperature=0, max_new_tokens=20, stop_token_ids=[])
        cancelled.cancel()
        for _ in range(500):  # cancelling is seen by the engine thread between two steps
            if cancelled.done:
                break
            threading.Event().wait(0.01)
        assert cancelled.done and budget.used == engine.kv_blocks_cached * block
    assert budget.used == 0  # the engine gave its parked rows back when it stopped


def test_prompt_logprobs_score_each_token_given_the_ones_before(model, monkeypatch):
    from yunque.infer import score

    ids = [5, 9, 2, 7, 7, 3, 11, 4]
    with torch.no_grad():
        reference = torch.log_softmax(model(torch.tensor([ids]))[0].float(), dim=-1)
    monkeypatch.setattr(score, "_LOGITS_FLOATS", 3 * model.config.vocab_size)  # slices of 3 positions
    got = score.prompt_logprobs(model, ids, top=2)
    assert got[0].logprob is None and [lp.token_id for lp in got] == ids
    for t in range(1, len(ids)):
        assert got[t].logprob == pytest.approx(float(reference[t - 1, ids[t]]), abs=1e-4)
        assert [i for i, _ in got[t].top] == reference[t - 1].topk(2).indices.tolist()
    with pytest.raises(YunqueError, match="context"):
        score.prompt_logprobs(model, [1] * (model.config.max_seq_len + 1))


def test_a_conversations_next_turn_reuses_its_cached_prefix(model):
    """Prompt caching: a finished row stays parked, and the next turn (its prompt, its answer and
    a new message) takes it over and prefills only the new tokens; the answer is the one it gets
    without the cache, whatever the sampling settings."""
    first = list(range(20, 60))
    with Engine(model, max_batch=2) as engine:
        for params in MIXED:
            h = engine.submit(first, max_new_tokens=12, stop_token_ids=[], **params)
            answer = [t for chunk in h for t in chunk.token_ids]
            second = first + answer + [7, 8, 9, 10]
            h2 = engine.submit(second, max_new_tokens=12, stop_token_ids=[], **params)
            got = [t for chunk in h2 for t in chunk.token_ids]
            assert h2.request.reused == len(first) + len(answer) - 1  # all but the answer's last token, never fed
            assert got == list(generate_ids(model, second, max_new_tokens=12, stop_token_ids=[], **params))
        unrelated = engine.submit(list(range(60, 90)), temperature=0, max_new_tokens=3, stop_token_ids=[])
        unrelated.text()
        assert unrelated.request.reused == 0


def test_parked_rows_move_and_give_way_without_changing_any_answer(model):
    """Conversations that share prefixes, through 3 slots and a small KV budget: parked rows are
    taken over, evicted for slots and for memory, and traded with decoding rows; every answer
    equals the one computed alone, and everything is given back at the end."""
    import random

    from yunque.infer.budget import BLOCK, KVBudget

    rng = random.Random(0)
    per_position = 2 * model.config.n_layer * model.config.n_kv_head * model.config.head_dim * 4
    budget = KVBudget(14 * BLOCK * per_position)
    roots = [list(range(10 + 7 * i, 40 + 7 * i)) for i in range(3)]
    history = [list(r) for r in roots]
    reused = 0
    with Engine(model, max_batch=3, kv_budget=budget) as engine:
        for wave in range(6):
            prompts = []
            for _ in range(rng.randint(1, 4)):
                c = rng.randrange(3)
                cut = rng.choice([len(history[c]), len(history[c]), rng.randint(20, len(history[c]))])
                prompts.append((c, history[c][:cut] + [rng.randrange(1, 300) for _ in range(rng.randint(1, 6))]))
            handles = [engine.submit(p, temperature=0, max_new_tokens=rng.randint(3, 10), stop_token_ids=[]) for _, p in prompts]
            for (c, p), h in zip(prompts, handles):
                answer = [t for chunk in h for t in chunk.token_ids]
                assert answer == naive_greedy(model, p, len(answer)) and h.result.finish_reason == "length"
                reused += h.request.reused
                if len(p) + len(answer) < 80:
                    history[c] = p + answer
        assert reused > 0 and engine.active == 0
        assert budget.used == engine.kv_blocks_cached * BLOCK * per_position
    assert budget.used == 0


def test_an_engine_gives_its_parked_rows_to_another_that_needs_the_memory(model):
    from yunque.infer.budget import BLOCK, KVBudget

    per_position = 2 * model.config.n_layer * model.config.n_kv_head * model.config.head_dim * 4
    budget = KVBudget(6 * BLOCK * per_position)
    with Engine(model, max_batch=4, kv_budget=budget) as a, Engine(model, max_batch=4, kv_budget=budget) as b:
        for start in (10, 100):  # two parked rows of 3 blocks each: the whole budget
            a.submit(list(range(start, start + 40)), temperature=0, max_new_tokens=4, stop_token_ids=[]).text()
        assert a.kv_blocks_cached == 6 and budget.used == budget.total
        h = b.submit(list(range(200, 230)), temperature=0, max_new_tokens=4, stop_token_ids=[])
        assert len([t for chunk in h for t in chunk.token_ids]) == 4  # admitted once `a` dropped its rows
        assert a.kv_blocks_cached == 0


def test_a_paced_reader_wakes_when_the_answer_ends_not_at_each_chunk(model):
    """`ended(timeout)` is the server's pause between two deltas under load: it returns when the
    request ends (so the final event is never held back for the pause) or after the timeout."""
    import asyncio

    roomy = tiny(model.config.vocab_size, max_seq_len=4096)  # a long answer that takes seconds

    async def main():
        with Engine(roomy, max_batch=2) as engine:
            long = engine.submit([1], max_new_tokens=4000, stop_token_ids=[])
            await long.ended(0.05)
            assert not long.done  # the timeout, while chunks kept coming
            short = engine.submit([2, 3], max_new_tokens=3, stop_token_ids=[])
            await asyncio.wait_for(short.ended(3600), timeout=60)  # its end, not the hour
            assert short.done and short.result.generated_tokens == 3
            await short.ended(3600)  # already over: returns at once
            long.cancel()

    asyncio.run(main())
