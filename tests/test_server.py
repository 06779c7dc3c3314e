"""A live `yunque serve` with a tiny model, exercised by the official `ollama` and `openai` clients.

One server per module (started once, ~3 s); the model is a random-initialised yunque
Transformer with a tokenizer trained on a few KB of text, so answers are gibberish but every
property of the APIs (shapes, streaming, counts, errors, concurrency) is real.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import httpx
import ollama
import openai
import pytest
from serving import rss_bytes, serve_tiny

from yunque.infer import constrain

CONTEXT = 2048


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = serve_tiny(tmp_path_factory, max_seq_len=CONTEXT)
    yield live
    live.stop()


@pytest.fixture
def oc(server):
    return ollama.Client(host=server.url)


@pytest.fixture
def ai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_root_version_and_list(server, oc):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and "running" in r.text
    assert httpx.head(server.url + "/").status_code == 200
    assert httpx.get(server.url + "/api/version").json()["version"]
    names = [m.model for m in oc.list().models]
    assert names == ["tiny:latest"]


def test_show(oc):
    info = oc.show("tiny")
    assert "FROM" in info.modelfile
    assert "<|assistant|>" in info.template
    assert info.details.family == "llama"
    assert info.modelinfo["general.parameter_count"] > 0


def test_chat_and_generate(oc):
    r = oc.chat(model="tiny", messages=[{"role": "user", "content": "Hello there"}], options={"num_predict": 8, "seed": 3, "temperature": 0.9})
    assert r.done and r.done_reason in ("stop", "length")
    assert r.message.role == "assistant" and isinstance(r.message.content, str)
    assert 1 <= r.eval_count <= 8 and r.prompt_eval_count > 3
    assert r.total_duration >= r.eval_duration > 0 and r.prompt_eval_duration > 0  # nanoseconds
    again = oc.chat(model="tiny", messages=[{"role": "user", "content": "Hello there"}], options={"num_predict": 8, "seed": 3, "temperature": 0.9})
    assert again.message.content == r.message.content  # a seed makes the answer repeatable

    g = oc.generate(model="tiny", prompt="Beautiful is better", options={"num_predict": 5, "temperature": 0})
    assert g.done and g.eval_count <= 5
    assert g.prompt_eval_count < len(g.context) <= g.prompt_eval_count + g.eval_count  # prompt ids, then the answer's
    follow = oc.generate(model="tiny", prompt="and then", context=g.context, options={"num_predict": 2})
    assert follow.prompt_eval_count > len(g.context)  # the conversation so far is part of the prompt
    raw = oc.generate(model="tiny", prompt="Beautiful is better", raw=True, options={"num_predict": 3, "temperature": 0})
    assert raw.prompt_eval_count < g.prompt_eval_count  # no template around a raw prompt


def test_streaming_chat_and_generate(oc):
    parts = list(oc.chat(model="tiny", messages=[{"role": "user", "content": "Tell me"}], stream=True, options={"num_predict": 12, "temperature": 0}))
    assert len(parts) >= 2 and all(not p.done for p in parts[:-1]) and parts[-1].done
    assert parts[-1].eval_count <= 12 and parts[-1].done_reason in ("stop", "length")
    text = "".join(p.message.content for p in parts)
    whole = oc.chat(model="tiny", messages=[{"role": "user", "content": "Tell me"}], options={"num_predict": 12, "temperature": 0})
    assert text == whole.message.content  # greedy: streamed pieces add up to the one-shot answer
    gen_parts = list(oc.generate(model="tiny", prompt="Flat is better", stream=True, options={"num_predict": 4}))
    assert gen_parts[-1].done and sum(1 for p in gen_parts if not p.done) >= 1


def test_stop_and_system_override(server):
    def gen(**extra):
        body = {"model": "tiny", "prompt": "x", "stream": False, **extra}
        return httpx.post(server.url + "/api/generate", json=body).json()

    plain, with_system = gen(options={"num_predict": 2}), gen(system="Be brief.", options={"num_predict": 2})
    assert with_system["prompt_eval_count"] > plain["prompt_eval_count"]  # the system turn is in the prompt
    answer = gen(options={"num_predict": 20, "temperature": 0})["response"]
    assert answer
    cut = gen(options={"num_predict": 20, "temperature": 0, "stop": [answer[-1]]})
    # The greedy answer repeats up to the first occurrence of its last character, which is not emitted.
    assert cut["done_reason"] == "stop" and cut["response"] == answer[: answer.index(answer[-1])]


def test_json_format_constrains_the_answer(server, ai):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "JSON please"}], "format": "json", "options": {"num_predict": 40, "seed": 1}}
    with httpx.stream("POST", server.url + "/api/chat", json=body, timeout=60) as r:
        events = [json.loads(line) for line in r.iter_lines()]
    text = "".join(e["message"]["content"] for e in events)
    assert len(events) > 2 and events[-1]["done"]  # streamed, not held back
    # A random model still writes JSON: a valid start of an object, and a whole one when it stopped.
    assert text.lstrip().startswith("{") and constrain.feed(constrain.START, text.encode()) is not None
    if events[-1]["done_reason"] == "stop":
        assert isinstance(json.loads(text), dict)
    answer = ai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "JSON"}], max_tokens=40,
                                        seed=2, response_format={"type": "json_object"})
    content = answer.choices[0].message.content
    assert constrain.feed(constrain.START, content.encode()) is not None
    if answer.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)


def test_embeddings(oc, ai):
    e = oc.embed(model="tiny", input=["one", "two words"])
    assert len(e.embeddings) == 2 and len(e.embeddings[0]) == len(e.embeddings[1]) > 0
    legacy = oc.embeddings(model="tiny", prompt="one")
    assert legacy.embedding == pytest.approx(e.embeddings[0], rel=1e-4, abs=1e-5)
    f = ai.embeddings.create(model="tiny", input="one")
    assert f.data[0].embedding == pytest.approx(e.embeddings[0], rel=1e-4, abs=1e-5)
    b = httpx.post(str(ai.base_url) + "embeddings", json={"model": "tiny", "input": ["one"], "encoding_format": "base64"}).json()
    import numpy as np

    decoded = np.frombuffer(base64.b64decode(b["data"][0]["embedding"]), dtype="<f4")
    assert decoded.tolist() == pytest.approx(e.embeddings[0], rel=1e-4, abs=1e-5)


def test_create_copy_delete(oc):
    oc.create(model="brief", from_="tiny", system="Answer in one word.", parameters={"temperature": 0.2})
    info = oc.show("brief")
    assert "Answer in one word." in info.modelfile and "temperature" in info.parameters
    oc.copy("brief", "brief2")
    assert {"brief:latest", "brief2:latest"} <= {m.model for m in oc.list().models}
    r = oc.chat(model="brief2", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 2})
    assert r.done
    oc.delete("brief")
    oc.delete("brief2")
    assert {m.model for m in oc.list().models} == {"tiny:latest"}
    with pytest.raises(ollama.ResponseError) as e:
        oc.delete("brief")
    assert e.value.status_code == 404


def test_ps_and_unload(server, oc):
    oc.generate(model="tiny", prompt="warm", options={"num_predict": 1})
    running = oc.ps().models
    assert [m.model for m in running] == ["tiny:latest"] and running[0].size > 0
    r = httpx.post(server.url + "/api/generate", json={"model": "tiny", "keep_alive": 0})
    assert r.json()["done_reason"] == "unload"
    assert oc.ps().models == []


def test_openai_chat(ai):
    r = ai.chat.completions.create(model="tiny", messages=[{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}], max_tokens=6, temperature=0, seed=1)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens <= 6
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    chunks = list(ai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_completion_tokens=6, temperature=0, seed=1, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.completion_tokens <= 6 and chunks[-1].choices == []
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = ai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0)
    assert streamed == whole.choices[0].message.content


def test_openai_completions_and_models(ai):
    assert [m.id for m in ai.models.list().data] == ["tiny:latest"]
    r = ai.completions.create(model="tiny", prompt="Simple is better than", max_tokens=4, temperature=0)
    assert r.object == "text_completion" and r.usage.completion_tokens <= 4
    pieces = list(ai.completions.create(model="tiny", prompt="Simple is better than", max_tokens=4, temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in pieces) == r.choices[0].text


def test_openai_errors(ai):
    with pytest.raises(openai.NotFoundError) as e:
        ai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["type"] == "invalid_request_error" and "nope" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="n must be between 1 and 16"):
        ai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], n=17)
    with pytest.raises(openai.BadRequestError) as e:
        ai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=10 * CONTEXT)
    assert "context" in e.value.body["message"]


def test_ollama_errors(oc):
    with pytest.raises(ollama.ResponseError) as e:
        oc.chat(model="missing", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 404 and "missing" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        oc.pull("tiny")
    assert "yunque import" in e.value.error


BAD_REQUESTS = [
    ("POST", "/api/chat", b"{not json", 400),
    ("POST", "/api/chat", b'{"model": 5, "messages": []}', 400),
    ("POST", "/api/chat", b'{"model": "tiny", "messages": "hello"}', 400),
    ("POST", "/api/chat", b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "options": {"temperature": "hot"}}', 400),
    ("POST", "/api/generate", b'{"model": "tiny", "prompt": "x", "options": {"num_predict": 1000000000000}}', 400),
    ("POST", "/api/generate", b'{"model": "tiny", "prompt": "x", "stream": "yes please"}', 400),
    ("POST", "/api/generate", b'{"model": "no-such-model", "prompt": "x"}', 404),
    ("POST", "/api/generate", b'{"model": "../etc/passwd", "prompt": "x"}', 400),
    ("POST", "/api/generate", b'{"model": "tiny", "prompt": "x", "keep_alive": "forever"}', 400),
    ("POST", "/api/show", b'{"model": "nothing"}', 404),
    ("POST", "/api/embed", b'{"model": "tiny", "input": 3}', 400),
    ("POST", "/v1/chat/completions", b"[1, 2", 400),
    ("POST", "/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}', 400),
    ("POST", "/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": -5}', 400),
    ("POST", "/v1/completions", b'{"model": "tiny", "prompt": "x", "temperature": 9}', 400),
    ("POST", "/v1/embeddings", b'{"model": "tiny", "input": "x", "encoding_format": "hex"}', 400),
    ("GET", "/api/nowhere", b"", 404),
]


def test_bad_input_battery_then_still_serving(server):
    over_context = json.dumps({"model": "tiny", "prompt": "word " * (CONTEXT + 50), "raw": True}).encode()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for method, path, body, status in [*BAD_REQUESTS, ("POST", "/api/generate", over_context, 400)]:
            r = http.request(method, path, content=body)
            assert r.status_code == status, (path, body[:80], r.text)
            err = r.json()["error"]
            if path.startswith("/v1"):
                assert set(err) == {"message", "type", "param", "code"} and err["message"]
            else:
                assert isinstance(err, str) and err
        ok = http.post("/api/generate", json={"model": "tiny", "prompt": "still there?", "stream": False, "options": {"num_predict": 2}})
        assert ok.status_code == 200 and ok.json()["done"]
    assert "Traceback" not in server.log.read_text()


def test_disconnect_cancels_generation(server):
    """A client that leaves mid-stream frees its batch slot at once, long before its answer would have ended."""
    body = {"model": "tiny", "prompt": "go", "options": {"num_predict": CONTEXT - 100, "temperature": 0}}

    def busy(http: httpx.Client) -> int:
        return sum(m["requests"]["running"] + m["requests"]["waiting"] for m in http.get("/api/ps").json()["models"])

    with httpx.Client(base_url=server.url, timeout=60) as http:
        full = http.post("/api/generate", json={**body, "stream": False}).json()
        assert full["done_reason"] == "length"  # greedy on this model never meets a stop token
        whole = full["eval_duration"] / 1e9
        with http.stream("POST", "/api/generate", json=body) as r:
            lines = r.iter_lines()
            assert not json.loads(next(lines))["done"]
            assert busy(http) == 1
        t0 = time.monotonic()
        while busy(http) and time.monotonic() - t0 < whole:
            time.sleep(0.01)
        assert busy(http) == 0 and time.monotonic() - t0 < whole / 3
        # The same for a client that gives up on a non-streaming answer.
        with pytest.raises(httpx.ReadTimeout):
            http.post("/api/generate", json={**body, "stream": False}, timeout=whole / 6)
        t0 = time.monotonic()
        while busy(http) and time.monotonic() - t0 < whole:
            time.sleep(0.01)
        assert busy(http) == 0 and time.monotonic() - t0 < whole / 2  # the server checks on the client every 0.1 s


async def _client(http: httpx.AsyncClient, i: int, rounds: int) -> list[tuple[int, int]]:
    out = []
    for j in range(rounds):
        body = {"model": "tiny", "messages": [{"role": "user", "content": f"client {i} request {j}"}], "options": {"num_predict": 24, "seed": i * 100 + j}}
        n_chunks, final = 0, None
        async with http.stream("POST", "/api/chat", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                event = json.loads(line)
                assert "error" not in event
                n_chunks += 1
                final = event
        assert final["done"] and final["eval_count"] >= 1
        out.append((n_chunks, final["eval_count"]))
    return out


@pytest.mark.slow
def test_load_16_concurrent_streaming_clients(server):
    async def wave(rounds: int) -> list:
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=32)) as http:
            return await asyncio.gather(*(_client(http, i, rounds) for i in range(16)))

    asyncio.run(wave(1))  # warm-up: load the model, reach steady state
    before = rss_bytes(server.proc.pid)
    t0 = time.perf_counter()
    results = asyncio.run(wave(3))
    elapsed = time.perf_counter() - t0
    after_first = rss_bytes(server.proc.pid)
    asyncio.run(wave(3))
    after = rss_bytes(server.proc.pid)
    assert sum(len(r) for r in results) == 48 and all(n >= 1 for r in results for _, n in r)
    assert elapsed < 60
    # Memory is stable: the second batch of 48 requests adds (almost) nothing over the first.
    assert after - after_first < 24 * 2**20, (before, after_first, after)
    assert after - before < 64 * 2**20, (before, after_first, after)


def _cli(server, *args, host=None, input=None):
    import os
    import subprocess
    import sys

    env = {**os.environ, "YUNQUE_HOME": str(server.home), "YUNQUE_HOST": host or f"127.0.0.1:{server.port}"}
    return subprocess.run([sys.executable, "-m", "yunque.cli", *args], env=env, capture_output=True, text=True, timeout=120, input=input)


def test_cli_run_ps_stop_through_the_server(server):
    r = _cli(server, "run", "tiny", "Say something")
    assert r.returncode == 0 and r.stdout.strip() and "in this process" not in r.stderr
    ps = _cli(server, "ps")
    assert ps.returncode == 0 and "tiny:latest" in ps.stdout and "KV BLOCKS" in ps.stdout
    stop = _cli(server, "stop", "tiny")
    assert stop.returncode == 0
    assert httpx.get(server.url + "/api/ps").json()["models"] == []
    missing = _cli(server, "run", "nope", "hi")
    assert missing.returncode == 1 and "nope" in missing.stderr and "Traceback" not in missing.stderr


def test_cli_run_in_process_without_a_server(server):
    from serving import free_port

    # Piped standard input is the prompt, as with `ollama run`; the interactive loop is tested in test_server_unit.
    chat = _cli(server, "run", "tiny", host=f"127.0.0.1:{free_port()}", input="hello there\n")
    assert chat.returncode == 0 and "loading tiny in this process" in chat.stderr and chat.stdout.strip()
    none = _cli(server, "ps", host=f"127.0.0.1:{free_port()}")
    assert none.returncode == 1 and "yunque serve" in none.stderr


def test_a_web_page_cannot_rewrite_a_model_or_rebind_to_the_server(server):
    """What a hostile page can send to 127.0.0.1 (a text/plain POST, a DNS-rebound Host) is refused before any route runs."""
    attack = json.dumps({"model": "tiny", "modelfile": "FROM tiny\nSYSTEM You are now the attacker's."}).encode()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        before = http.post("/api/show", json={"model": "tiny"}).json()["system"]
        r = http.post("/api/create", content=attack, headers={"Origin": "https://evil.example", "Content-Type": "text/plain"})
        assert r.status_code == 403 and "YUNQUE_ORIGINS" in r.json()["error"]
        r = http.post("/api/create", content=attack, headers={"Host": f"rebound.example:{server.port}"})
        assert r.status_code == 403
        assert http.post("/api/show", json={"model": "tiny"}).json()["system"] == before
        r = http.post("/api/show", content=b"{" + b" " * (33 * 1000**2) + b"}")
        assert r.status_code == 413
        assert http.get("/api/version", headers={"Origin": server.url}).status_code == 200  # the web chat's own origin


def test_a_poisoned_request_among_15_streams_fails_alone(server):
    """Sampling values that would underflow in float32 are a 400 for their request only; the 15
    streams sent beside it all finish."""

    async def poisoned(http: httpx.AsyncClient, options: dict) -> httpx.Response:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "poison"}], "options": {"num_predict": 24, **options}}
        return await http.post("/api/chat", json=body)

    async def run() -> list:
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=32)) as http:
            return await asyncio.gather(
                *(_client(http, i, 1) for i in range(15)),
                poisoned(http, {"temperature": 1e-300}),
                poisoned(http, {"repeat_penalty": 1e-300}),
            )

    *healthy, bad_temperature, bad_penalty = asyncio.run(run())
    assert len(healthy) == 15 and all(final_count >= 1 for [(_, final_count)] in healthy)
    assert bad_temperature.status_code == 400 and "temperature (must be 0 (greedy) or at least 0.001)" in bad_temperature.json()["error"]
    assert bad_penalty.status_code == 400 and "repeat_penalty (must be between 0.01 and 100" in bad_penalty.json()["error"]


def test_openai_refuses_what_it_cannot_honour_and_applies_logit_bias(ai):
    hi = [{"role": "user", "content": "Hi"}]
    for extra, needle in [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"top_logprobs": 2}, "top_logprobs needs logprobs: true"),
        ({"frobnicate": 1}, "unrecognized request argument 'frobnicate'"),
        ({"logit_bias": {"99999999": 5}}, "not a token id"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            ai.chat.completions.create(model="tiny", messages=hi, max_tokens=2, extra_body=extra)
        assert needle in e.value.body["message"] and e.value.body["param"] in {*extra, "logit_bias"}
    with pytest.raises(openai.BadRequestError, match="suffix"):
        ai.completions.create(model="tiny", prompt="x", suffix="y", max_tokens=2)
    neutral = {"tools": [], "tool_choice": "none", "logprobs": False, "user": "u1", "metadata": {"k": "v"}, "store": False}
    assert ai.chat.completions.create(model="tiny", messages=hi, max_tokens=2, extra_body=neutral).choices[0].finish_reason
    forced = ai.completions.create(model="tiny", prompt="Simple is", max_tokens=5, temperature=1.0, logit_bias={"101": 100}, seed=3)
    assert forced.choices[0].text == "e" * 5  # id 101 is the byte "e" in a yunque tokenizer


def test_openai_logprobs_in_chat_and_completions_whole_and_streamed(ai):
    hi = [{"role": "user", "content": "Hi"}]
    whole = ai.chat.completions.create(model="tiny", messages=hi, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2)
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens - (whole.choices[0].finish_reason == "stop")
    assert b"".join(bytes(t.bytes) for t in content).decode() == whole.choices[0].message.content
    for t in content:  # greedy: the chosen token is the most likely one
        assert t.logprob <= 0 and len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob == pytest.approx(t.logprob, abs=1e-5)
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
    chunks = list(ai.chat.completions.create(model="tiny", messages=hi, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [(t.token, round(t.logprob, 4)) for t in streamed] == [(t.token, round(t.logprob, 4)) for t in content]
    assert whole.choices[0].logprobs is not None and ai.chat.completions.create(model="tiny", messages=hi, max_tokens=2).choices[0].logprobs is None
    done = ai.completions.create(model="tiny", prompt="Simple is better than", max_tokens=6, temperature=0, logprobs=3)
    lp = done.choices[0].logprobs
    assert "".join(lp.tokens) == done.choices[0].text and len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert all(len(top) <= 3 and max(top.values()) == pytest.approx(v, abs=1e-5) for top, v in zip(lp.top_logprobs, lp.token_logprobs))


def test_openai_n_choices_and_several_prompts_whole_and_streamed(ai):
    """n choices per prompt, and the completions route's lists of prompts (texts or token ids),
    decoded together: each choice is its own seeded draw, streamed chunks carry their index."""
    hi = [{"role": "user", "content": "Hi"}]
    r = ai.chat.completions.create(model="tiny", messages=hi, max_tokens=6, temperature=1.0, seed=7, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2] and len({c.message.content for c in r.choices}) > 1
    first = ai.chat.completions.create(model="tiny", messages=hi, max_tokens=6, temperature=1.0, seed=7)
    assert r.choices[0].message.content == first.choices[0].message.content  # choice 0 keeps the seed
    assert r.usage.prompt_tokens == first.usage.prompt_tokens  # the prompt counts once
    assert 3 <= r.usage.completion_tokens <= 18  # every choice's tokens: 1 to 6 each
    chunks = list(ai.chat.completions.create(model="tiny", messages=hi, max_tokens=6, temperature=1.0, seed=7, n=3, stream=True))
    texts = {i: "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i) for i in range(3)}
    assert texts == {c.index: c.message.content for c in r.choices}
    assert sum(1 for c in chunks if c.choices and c.choices[0].finish_reason) == 3
    done = ai.completions.create(model="tiny", prompt=["Simple is", "Beautiful is"], max_tokens=4, temperature=0, n=2)
    assert [c.index for c in done.choices] == [0, 1, 2, 3]
    assert done.choices[0].text == done.choices[1].text and done.choices[2].text == done.choices[3].text  # greedy
    alone = ai.completions.create(model="tiny", prompt="Beautiful is", max_tokens=4, temperature=0)
    assert done.choices[2].text == alone.choices[0].text
    ids = ai.completions.create(model="tiny", prompt=[[83, 105, 109], [66, 101]], max_tokens=3, temperature=0, echo=True)
    assert ids.choices[0].text.startswith("Sim") and ids.choices[1].text.startswith("Be")  # ids 0-255 are bytes, echoed as text


def test_a_client_leaving_a_stream_of_several_choices_frees_them_all(server):
    body = {"model": "tiny", "prompt": "go", "max_tokens": CONTEXT - 100, "temperature": 0, "n": 3, "stream": True}

    def busy(http: httpx.Client) -> int:
        return sum(m["requests"]["running"] + m["requests"]["waiting"] for m in http.get("/api/ps").json()["models"])

    with httpx.Client(base_url=server.url, timeout=60) as http:
        with http.stream("POST", "/v1/completions", json=body) as r:
            lines = (line for line in r.iter_lines() if line.startswith("data: {"))
            next(lines)
            assert busy(http) == 3
        deadline = time.monotonic() + 30
        while busy(http) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert busy(http) == 0


def test_openai_echo_logprobs_score_the_prompt_as_lm_eval_asks(ai):
    """lm-eval's loglikelihood request: echo, logprobs, max_tokens 0 (or 1), temperature 0, a list
    of prompts. Each choice's logprobs cover the prompt's tokens, the first without a value,
    and match those a generation reports for the same tokens."""
    text = "Simple is better than complex."
    scored = ai.completions.create(model="tiny", prompt=[text, "Flat is better"], echo=True, logprobs=1, max_tokens=0, temperature=0)
    first = scored.choices[0]
    assert first.text == text and "".join(first.logprobs.tokens) == text and scored.usage.completion_tokens == 0
    assert first.logprobs.token_logprobs[0] is None and first.logprobs.top_logprobs[0] is None
    assert all(v is not None and v <= 0 for v in first.logprobs.token_logprobs[1:])
    assert len(scored.choices) == 2 and scored.choices[1].text == "Flat is better"
    # The prompt's next token, generated greedily, carries the logprob the scoring gives it.
    gen = ai.completions.create(model="tiny", prompt=text, max_tokens=1, temperature=0, logprobs=1, echo=True)
    lp = gen.choices[0].logprobs
    assert lp.tokens[: len(first.logprobs.tokens)] == first.logprobs.tokens
    assert lp.token_logprobs[1 : len(first.logprobs.tokens)] == pytest.approx(first.logprobs.token_logprobs[1:], abs=1e-4)
    assert len(lp.tokens) == len(first.logprobs.tokens) + 1 and gen.choices[0].text.startswith(text)


def test_a_conversations_next_turn_is_read_from_the_prompt_cache(server, ai):
    """The second turn of a chat re-sends the first, with the answer: the server reads those
    tokens from the prompt cache and says so (Ollama's prompt_eval_cached_count, OpenAI's
    usage.prompt_tokens_details.cached_tokens), and the answer is the same as computed afresh."""
    def chat(messages):
        body = {"model": "tiny", "messages": messages, "stream": False, "options": {"num_predict": 12, "temperature": 0}}
        return httpx.post(server.url + "/api/chat", json=body, timeout=60).json()

    history = [{"role": "system", "content": "You answer questions about the Zen of Python, briefly and kindly."},
               {"role": "user", "content": "Which is better, beautiful or ugly? And explicit or implicit?"}]
    first = chat(history)
    history += [first["message"], {"role": "user", "content": "And simple?"}]
    second = chat(history)
    assert 16 <= second["prompt_eval_cached_count"] < second["prompt_eval_count"]
    openai_turn = ai.chat.completions.create(model="tiny", messages=history, max_tokens=12, temperature=0)
    assert openai_turn.usage.prompt_tokens_details.cached_tokens >= 16
    assert openai_turn.choices[0].message.content == second["message"]["content"]
    assert chat([{"role": "user", "content": "x"}])["prompt_eval_cached_count"] == 0
