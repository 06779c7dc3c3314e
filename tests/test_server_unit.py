"""Server pieces without a live server: addresses and keys, keep_alive, the model manager, auth, `yunque run`'s chat loop."""

from __future__ import annotations

import asyncio
import io
import math
import subprocess
import sys
from types import SimpleNamespace

import httpx
import pytest
from serving import free_port, make_tiny_model

from yunque.errors import YunqueError
from yunque.cli.client import Client
from yunque.server.errors import APIError, ModelNotFound
from yunque.server.manager import ModelManager
from yunque.cli.repl import chat_loop
from yunque.server.settings import base_url, is_loopback, parse_host, parse_keep_alive, require_key_for


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, ("127.0.0.1", 11434)),
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        ("http://example.org", ("example.org", 11434)),
        (":9000", ("127.0.0.1", 9000)),
        ("[::1]:7000", ("::1", 7000)),
        ("localhost", ("localhost", 11434)),
    ],
)
def test_parse_host(value, expected):
    assert parse_host(value) == expected


def test_bad_host_and_urls():
    with pytest.raises(YunqueError, match="0.0.0.0:8080"):
        parse_host("host:notaport")
    assert base_url("0.0.0.0", 8080) == "http://127.0.0.1:8080"
    assert base_url("::1", 1) == "http://[::1]:1"


def test_non_loopback_needs_a_key():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    require_key_for("127.0.0.1", None)
    require_key_for("0.0.0.0", "secret")
    with pytest.raises(YunqueError, match="YUNQUE_API_KEY"):
        require_key_for("0.0.0.0", None)


def test_serve_refuses_public_address_without_key(tmp_path):
    env = {"YUNQUE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "YUNQUE_HOST": f"0.0.0.0:{free_port()}"}
    r = subprocess.run([sys.executable, "-m", "yunque.cli", "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "YUNQUE_API_KEY" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("value, seconds", [(None, 300), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), (0, 0), ("0", 0), (12.5, 12.5)])
def test_keep_alive(value, seconds):
    assert parse_keep_alive(value) == pytest.approx(seconds)


def test_keep_alive_forever_and_errors():
    assert parse_keep_alive(-1) == math.inf and parse_keep_alive("-1m") == math.inf
    for bad in ("forever", "5 minutes", True, [1]):
        with pytest.raises(YunqueError):
            parse_keep_alive(bad)


@pytest.fixture
def store_with_models(tmp_path, monkeypatch):
    from yunque.store import entries as store

    src = make_tiny_model(tmp_path / "m", d_model=32, n_layer=1, max_seq_len=64, vocab_size=300)
    for name in ("a", "b", "c"):
        store.import_model(src, name)
    return store


def _fake_loader(loads: list[str]):
    def load(entry):
        loads.append(str(entry.name))
        scheduler = SimpleNamespace(shutdown=lambda: loads.append(f"shutdown {entry.name}"))
        return SimpleNamespace(scheduler=scheduler, device="cpu", context_length=64, size=1)

    return load


def test_manager_loads_once_keeps_alive_and_unloads(store_with_models):
    loads: list[str] = []

    async def scenario():
        manager = ModelManager(_fake_loader(loads), default_keep_alive=300, max_loaded=2, reap_interval=0.01)
        await manager.start()
        got = await asyncio.gather(*(manager.acquire("a") for _ in range(5)))
        assert loads == ["a:latest"] and {id(lm) for lm, _ in got} == {id(got[0][0])}
        lm = got[0][0]
        assert lm.active == 5
        for lm_, _ in got:
            manager.release(lm_)
        assert [m.name for m in manager.running()] == ["a:latest"]
        # keep_alive 0 unloads as soon as the last request using the model is done
        lm, _ = await manager.acquire("b", keep_alive=0)
        assert lm.active == 1 and manager.get_loaded("b")
        manager.release(lm)
        await asyncio.sleep(0.05)
        assert manager.get_loaded("b") is None and "shutdown b:latest" in loads
        # at capacity, the least recently used idle model makes room
        await manager.acquire("b")
        lm_c, _ = await manager.acquire("c")
        assert manager.get_loaded("a") is None and {m.name for m in manager.running()} == {"b:latest", "c:latest"}
        # a short keep_alive expires through the reaper; a model in use is never unloaded under its request
        lm_c.keep_alive = 0.01
        await asyncio.sleep(0.1)
        assert manager.get_loaded("c") is not None
        manager.release(lm_c)
        await asyncio.sleep(0.1)
        assert manager.get_loaded("c") is None
        with pytest.raises(ModelNotFound):
            await manager.acquire("zzz")
        with pytest.raises(YunqueError, match="Invalid model name"):
            await manager.acquire("../x")
        await manager.close()
        assert manager.running() == []

    asyncio.run(scenario())


def test_api_key_is_required_on_every_route(store_with_models):
    from yunque.server.app import create_app

    app = create_app(ModelManager(_fake_loader([])), api_key="s3cret")

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
            r = await http.get("/api/tags")
            assert r.status_code == 401 and "API key" in r.json()["error"]
            r = await http.get("/v1/models", headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
            assert (await http.get("/", headers={"Authorization": "Bearer s3cret"})).status_code == 200
            r = await http.get("/api/tags", headers={"Authorization": "Bearer s3cret"})
            assert r.status_code == 200 and len(r.json()["models"]) == 3
            page = await http.get("/ui/")  # the page itself holds nothing secret; it asks for the key
            assert page.status_code == 200 and "yunque" in page.text

    asyncio.run(scenario())


def test_client_without_server_says_how_to_start_one():
    client = Client(f"http://127.0.0.1:{free_port()}")
    assert not client.is_running()
    with pytest.raises(YunqueError, match="yunque serve"):
        client.ps()


class EchoBackend:
    def __init__(self):
        self.calls = []

    def chat(self, messages, options):
        self.calls.append((messages, dict(options)))
        yield "echo: "
        yield messages[-1]["content"]

    def close(self):
        pass


def test_chat_loop_commands_and_history():
    backend = EchoBackend()
    lines = iter(["/?", "/set system Be terse.", "hello", "/set parameter temperature 0.3", "/set parameter temperature hot", "again", "/clear", "fresh", "/nope", "/bye", "unreached"])
    out = io.StringIO()
    chat_loop(backend, read=lambda prompt: next(lines), out=out)
    text = out.getvalue()
    assert "/set system" in text and "echo: hello" in text and "Unknown command" in text and "Could not set it" in text
    first, second, third = backend.calls
    assert first[0] == [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hello"}]
    assert [m["content"] for m in second[0]] == ["Be terse.", "hello", "echo: hello", "again"] and second[1] == {"temperature": 0.3}
    assert [m["content"] for m in third[0]] == ["Be terse.", "fresh"]
    assert len(backend.calls) == 3  # nothing after /bye


class _FullEngine:
    """An engine whose queue is always full."""

    active = waiting = 0

    def submit(self, ids, params):
        from yunque.infer.batch import QueueFullError

        raise QueueFullError("full")

    def shutdown(self):
        pass


def test_full_queue_is_503_in_both_dialects(store_with_models):
    from yunque.server.app import create_app
    from yunque.text.tokenizer import Tokenizer

    def load(entry):
        return SimpleNamespace(scheduler=_FullEngine(), tokenizer=Tokenizer.from_pretrained(entry.path), device="cpu", context_length=64, size=1, default_context=None)

    app = create_app(ModelManager(load))

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
            r = await http.post("/api/chat", json={"model": "a", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 503 and "busy" in r.json()["error"]
            r = await http.post("/v1/chat/completions", json={"model": "a", "messages": [{"role": "user", "content": "hi"}], "stream": True})
            assert r.status_code == 503 and r.json()["error"]["code"] == "server_busy"

    asyncio.run(scenario())


def test_serve_on_a_busy_port_is_one_sentence_before_serving(tmp_path):
    import os
    import socket

    with socket.socket() as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen()
        port = occupant.getsockname()[1]
        env = {**os.environ, "YUNQUE_HOME": str(tmp_path)}
        proc = subprocess.run([sys.executable, "-m", "yunque.cli", "serve", "--port", str(port)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert f"port {port} on 127.0.0.1 is in use" in proc.stderr and "--port" in proc.stderr
    assert "serving on" not in proc.stderr and "Traceback" not in proc.stderr and "Errno" not in proc.stderr


def test_load_runner_reads_the_tokenizer_before_the_weights(tmp_path, monkeypatch):
    from yunque.model.transformer import Transformer
    from yunque.server.runner import load_runner

    src = make_tiny_model(tmp_path / "m", d_model=32, n_layer=1, max_seq_len=64, vocab_size=300)
    (src / "tokenizer.json").unlink()

    def no_weights(*a, **k):
        raise AssertionError("the weights were loaded before the tokenizer was found missing")

    monkeypatch.setattr(Transformer, "from_pretrained", no_weights)
    with pytest.raises(YunqueError):
        load_runner(SimpleNamespace(path=src))


def test_runner_embed_encodes_each_text_once_and_counts_what_it_read(tmp_path, monkeypatch):
    from yunque.model.transformer import Transformer
    from yunque.server.runner import Runner
    from yunque.text.tokenizer import Tokenizer

    src = make_tiny_model(tmp_path / "m", d_model=32, n_layer=1, max_seq_len=64, vocab_size=300)
    tokenizer = Tokenizer.from_pretrained(src)
    runner = Runner(Transformer.from_pretrained(src), tokenizer, scheduler=None, context_length=64, size=0, device="cpu")
    texts = ["def f(x): return x", "import this " * 40]
    lengths = [len(tokenizer.encode(t)) for t in texts]
    assert lengths[1] > 64
    encoded: list[str] = []
    encode = tokenizer.encode
    monkeypatch.setattr(tokenizer, "encode", lambda text, *a, **k: encoded.append(text) or encode(text, *a, **k))
    vectors, n_tokens = asyncio.run(runner.embed(texts))
    assert encoded == texts and len(vectors) == 2
    assert n_tokens == lengths[0] + 64  # the long text is cut to the context


def test_streams_batch_their_deltas_under_load_and_not_alone(tmp_path, monkeypatch):
    from yunque.model.transformer import Transformer
    from yunque.infer.engine import Engine
    from yunque.infer.sampling import SamplingParams
    from yunque.server import answer
    from yunque.server.prepare import Prepared
    from yunque.server.runner import Runner
    from yunque.text.tokenizer import Tokenizer

    src = make_tiny_model(tmp_path / "m", d_model=32, n_layer=1, max_seq_len=256, vocab_size=300)
    tokenizer, model = Tokenizer.from_pretrained(src), Transformer.from_pretrained(src)
    monkeypatch.setattr(answer, "DELTA_RATE", 100.0)  # 4 streams: one delta each per 40 ms

    async def deltas(runner: Runner, n: int) -> list[tuple[int, int]]:
        async def one(i: int) -> tuple[int, int]:
            params = SamplingParams(max_new_tokens=150, seed=i, stop_token_ids=())
            items = [item async for item in answer.generate(runner, Prepared([1, 2, 3], params))]
            return len(items) - 1, items[-1].completion_tokens  # deltas, tokens

        return await asyncio.gather(*(one(i) for i in range(n)))

    with Engine(model, tokenizer, max_batch=4) as engine:
        runner = Runner(model, tokenizer, engine, context_length=256, size=0, device="cpu")
        [(alone, tokens)] = asyncio.run(deltas(runner, 1))  # every token with text is its own delta
        assert tokens == 150 and alone > 75
        together = asyncio.run(deltas(runner, 4))  # row 0 has seed 0 again: the same tokens, in fewer deltas
        assert all(t == 150 for _, t in together) and together[0][0] < 0.8 * alone


def test_the_one_table_of_sampling_names_names_real_fields_everywhere():
    import dataclasses

    from yunque.infer.options import OPTIONS, from_generation_config, from_openai, sampling_fields
    from yunque.infer.sampling import SamplingParams
    from yunque.server.openai_api import ChatCompletionRequest

    fields = {f.name for f in dataclasses.fields(SamplingParams)}
    assert {o.field for o in OPTIONS if o.field} <= fields
    assert {o.openai for o in OPTIONS if o.openai} <= set(ChatCompletionRequest.model_fields)
    assert sampling_fields({"repeat_penalty": 1.3, "top_k": 5, "num_ctx": 64}) == {"repetition_penalty": 1.3, "top_k": 5}
    assert from_generation_config({"repetition_penalty": 1.2, "top_p": None, "do_sample": True}) == {"repeat_penalty": 1.2}
    body = ChatCompletionRequest(model="m", messages=[], temperature=0.5, presence_penalty=0.25)
    assert from_openai(body) == {"temperature": 0.5, "presence_penalty": 0.25}


def test_size_units_and_the_policy_from_the_environment():
    from yunque.server.guard import DEFAULT_MAX_BODY, parse_size, policy_from_env

    assert [parse_size(v) for v in ("1048576", "32MB", "512k", "1GiB", "2 KiB")] == [1048576, 32_000_000, 512_000, 2**30, 2048]
    with pytest.raises(YunqueError, match="32MB"):
        parse_size("lots")
    policy = policy_from_env("127.0.0.1", {"YUNQUE_ORIGINS": "https://app.example, chrome-extension://*", "YUNQUE_MAX_BODY": "1KB"})
    assert policy.loopback_bind and policy.max_body == 1000 and policy_from_env("127.0.0.1", {}).max_body == DEFAULT_MAX_BODY
    assert policy.origin_allowed("chrome-extension://abc", "127.0.0.1:11434") and policy.origin_allowed("http://localhost:3000", None)
    assert not policy.origin_allowed("https://evil.example", "127.0.0.1:11434") and not policy.origin_allowed("null", None)
    public = policy_from_env("0.0.0.0", {"YUNQUE_HOSTS": "box.lan"})
    assert public.host_allowed("box.lan:11434") and public.host_allowed("[::1]:11434") and not public.host_allowed("evil.example")
    assert policy_from_env("0.0.0.0", {}).host_allowed("anything.example")  # beyond loopback the API key guards
    assert policy_from_env("0.0.0.0", {}).origin_allowed("http://box.lan:11434", "box.lan:11434")  # the web chat, same origin


def test_the_guard_refuses_cross_site_rebinding_and_oversized_requests(store_with_models):
    from yunque.server.app import create_app
    from yunque.server.guard import Policy

    app = create_app(ModelManager(_fake_loader([])), policy=Policy(origins=("https://ok.example",), max_body=2000))
    evil = {"Origin": "https://evil.example", "Content-Type": "text/plain"}

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:11434") as http:
            r = await http.post("/api/copy", content=b'{"source": "a", "destination": "stolen"}', headers=evil)
            assert r.status_code == 403 and "evil.example" in r.json()["error"]
            r = await http.post("/v1/chat/completions", content=b"{}", headers=evil)
            assert r.status_code == 403 and r.json()["error"]["message"].startswith("requests from the web page")
            r = await http.get("/api/tags", headers={"Host": "rebound.example:11434"})
            assert r.status_code == 403 and "Host" in r.json()["error"]
            r = await http.get("/api/tags", headers={"Origin": "http://localhost:5173"})
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:5173"
            pre = {"Origin": "https://ok.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type, authorization"}
            r = await http.options("/v1/chat/completions", headers=pre)
            assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "https://ok.example"
            assert "POST" in r.headers["access-control-allow-methods"] and r.headers["access-control-allow-headers"] == "content-type, authorization"
            r = await http.options("/v1/chat/completions", headers={**pre, "Origin": "https://evil.example"})
            assert r.status_code == 403
            r = await http.post("/api/show", content=b"x" * 2001)
            assert r.status_code == 413 and "2,000 bytes" in r.json()["error"]

            async def chunked():
                for _ in range(3):
                    yield b"x" * 1000

            r = await http.post("/api/show", content=chunked())  # no Content-Length: counted as it arrives
            assert r.status_code == 413
            r = await http.post("/api/show", content=b'{"model": "a"}')  # curl: no Origin, form content type
            assert r.status_code == 200 and r.json()["details"]

    asyncio.run(scenario())
    assert sorted(str(e.name) for e in store_with_models.list_models()) == ["a:latest", "b:latest", "c:latest"]  # nothing was copied


def test_store_work_and_prompt_encoding_run_off_the_event_loop(store_with_models, monkeypatch):
    """Store operations and tokenizing (a huge prompt is seconds of CPU) run in worker threads,
    never on the event loop's thread, which keeps answering other requests meanwhile."""
    import threading

    from yunque.server import prepare
    from yunque.server.app import create_app
    from yunque.store import entries
    from yunque.text.tokenizer import Tokenizer

    threads: dict[str, threading.Thread] = {}

    def recorded(name, fn):
        def wrapped(*args, **kwargs):
            threads[name] = threading.current_thread()
            return fn(*args, **kwargs)

        return wrapped

    for module, name in ((entries, "copy"), (entries, "list_models"), (entries, "create"), (prepare, "encode")):
        monkeypatch.setattr(module, name, recorded(name, getattr(module, name)))

    def load(entry):
        return SimpleNamespace(scheduler=_FullEngine(), tokenizer=Tokenizer.from_pretrained(entry.path), device="cpu", context_length=64, size=1, default_context=None)

    app = create_app(ModelManager(load))

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
            statuses = [
                (await http.post("/api/copy", json={"source": "a", "destination": "d"})).status_code,
                (await http.get("/api/tags")).status_code,
                (await http.post("/api/create", json={"model": "e", "from": "a", "system": "Be brief.", "stream": False})).status_code,
                (await http.post("/api/generate", json={"model": "a", "prompt": "hi", "stream": False})).status_code,
            ]
            return statuses, threading.current_thread()

    statuses, loop_thread = asyncio.run(scenario())
    assert statuses == [200, 200, 200, 503]  # 503: the fake engine's queue is full, after the prompt was encoded
    assert set(threads) == {"copy", "list_models", "create", "encode"}
    assert all(t is not loop_thread for t in threads.values()), threads


def test_max_loaded_holds_a_request_for_another_model_waits_for_one_to_go_idle(store_with_models):
    loads: list[str] = []

    async def scenario():
        manager = ModelManager(_fake_loader(loads), max_loaded=2)
        a, _ = await manager.acquire("a")
        b, _ = await manager.acquire("b")
        waiting = asyncio.ensure_future(manager.acquire("c"))
        for _ in range(20):
            await asyncio.sleep(0.01)  # let it run as far as it can
        assert not waiting.done() and len(manager.running()) == 2 and "c:latest" not in loads
        manager.release(a)  # `a` goes idle: it is unloaded for `c`, `b` keeps serving
        c, _ = await asyncio.wait_for(waiting, 5)
        assert c.name == "c:latest" and {m.name for m in manager.running()} == {"b:latest", "c:latest"}
        assert loads.index("shutdown a:latest") < loads.index("c:latest")
        cancelled = asyncio.ensure_future(manager.acquire("a"))  # a client that gives up while waiting
        await asyncio.sleep(0.05)
        cancelled.cancel()
        manager.release(b)
        manager.release(c)
        a2, _ = await asyncio.wait_for(manager.acquire("a"), 5)  # the place it waited for is free again
        assert len(manager.running()) == 2
        manager.release(a2)
        await manager.close()

    asyncio.run(scenario())


def test_a_model_whose_weights_cannot_fit_is_refused_with_the_numbers_before_loading(store_with_models, monkeypatch):
    from yunque.model import device
    from yunque.model.transformer import Transformer
    from yunque.server.errors import APIError
    from yunque.server.runner import load_runner

    def no_weights(*a, **k):
        raise AssertionError("the weights were loaded although they cannot fit")

    entry = store_with_models.get("a")
    monkeypatch.setattr(Transformer, "from_pretrained", no_weights)
    monkeypatch.setattr(device, "available_memory", lambda kind: 1000)  # 1,000 bytes free
    with pytest.raises(APIError) as e:
        load_runner(entry)
    weights = entry.details["parameter_count"] * 4  # float32 on a CPU
    assert e.value.status == 507 and f"{weights / 2**10:.1f} KiB for its weights but 1000 bytes of memory is free" in e.value.message
    # Free memory that holds the weights but not also the KV cache the budget may still hand out.
    from yunque.infer.budget import KVBudget

    monkeypatch.setattr(device, "available_memory", lambda kind: weights + 2**20)
    with pytest.raises(APIError, match=r"beside the 2.0 MiB of KV cache the budget may still use; .*lower --kv-budget"):
        load_runner(entry, kv_budget=KVBudget(2 * 2**20))


def test_requests_without_num_ctx_get_the_servers_default_context(tmp_path, monkeypatch):
    """As Ollama: 4096 tokens of context unless num_ctx (Modelfile or request) raises it, up to the
    model's own; an OpenAI prompt may use the whole context, its default answer the default one."""
    from yunque.server.prepare import ollama_params, openai_params
    from yunque.server.settings import DEFAULT_CONTEXT, context_length
    from yunque.store.modelfile import Modelfile
    from yunque.store.chat import model_chat_settings
    from yunque.text.tokenizer import Tokenizer

    src = make_tiny_model(tmp_path / "m", d_model=32, n_layer=1, max_seq_len=64, vocab_size=300)
    runner = SimpleNamespace(tokenizer=Tokenizer.from_pretrained(src), context_length=131072, default_context=DEFAULT_CONTEXT)
    settings = model_chat_settings(src, Modelfile(from_="x"))
    assert ollama_params(runner, settings, {}, 100).max_new_tokens == 4096 - 100
    assert ollama_params(runner, settings, {"num_ctx": 8192}, 100).max_new_tokens == 8192 - 100
    assert ollama_params(runner, settings, {"num_ctx": 10**7}, 100).max_new_tokens == 131072 - 100
    with pytest.raises(APIError, match="context holds 4096; shorten the prompt or raise num_ctx"):
        ollama_params(runner, settings, {}, 5000)
    body = SimpleNamespace(max_tokens=None, max_completion_tokens=None, stop=None, logit_bias=None, logprobs_asked=lambda: None,
                           temperature=None, top_p=None, seed=None, presence_penalty=None, frequency_penalty=None)
    assert openai_params(runner, settings, body, 100).max_new_tokens == 4096 - 100
    assert openai_params(runner, settings, body, 5000).max_new_tokens == 131072 - 5000
    for name in ("YUNQUE_CONTEXT_LENGTH", "OLLAMA_CONTEXT_LENGTH"):
        monkeypatch.delenv(name, raising=False)
    assert context_length(None) == DEFAULT_CONTEXT and context_length(8192) == 8192
    monkeypatch.setenv("OLLAMA_CONTEXT_LENGTH", "2048")
    assert context_length(None) == 2048
    with pytest.raises(YunqueError, match="--context-length"):
        context_length(0)
