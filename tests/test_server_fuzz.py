"""Property-based request bodies against a live server: whatever JSON (or not-quite JSON) a
client sends to any route, the answer is never a 500 (the documented 501 and 503 aside), and
the server stays up and keeps answering correctly.

Bodies mix each route's real field names with made-up ones, and values of every JSON type at
their edges (huge and negative integers, NaN and infinities as Python's json writes them,
deep nesting, long and odd strings). Generation requests default to a few tokens so a few
hundred requests take seconds on the tiny model.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving import serve_tiny

ROUTES = {
    ("POST", "/api/chat"): ["model", "messages", "stream", "format", "options", "keep_alive", "template", "tools"],
    ("POST", "/api/generate"): ["model", "prompt", "suffix", "system", "template", "context", "raw", "stream", "format", "options", "keep_alive"],
    ("POST", "/api/embed"): ["model", "input", "truncate", "options", "keep_alive"],
    ("POST", "/api/embeddings"): ["model", "prompt", "options"],
    ("POST", "/api/show"): ["model", "name", "verbose"],
    ("POST", "/api/create"): ["model", "modelfile", "from", "system", "template", "parameters", "messages", "license", "stream"],
    ("POST", "/api/copy"): ["source", "destination"],
    ("DELETE", "/api/delete"): ["model", "name"],
    ("POST", "/v1/chat/completions"): ["model", "messages", "stream", "max_tokens", "temperature", "top_p", "seed", "stop", "n",
                                       "logit_bias", "response_format", "stream_options", "tools", "presence_penalty", "user"],
    ("POST", "/v1/completions"): ["model", "prompt", "echo", "suffix", "max_tokens", "temperature", "stop", "logit_bias", "stream"],
    ("POST", "/v1/embeddings"): ["model", "input", "encoding_format", "dimensions"],
}
GENERATING = {"/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions"}
OPTION_NAMES = ["temperature", "top_k", "top_p", "min_p", "num_predict", "num_ctx", "seed", "stop", "repeat_penalty", "frequency_penalty"]

scalars = (
    st.none() | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70) | st.sampled_from([0, 1, -1, 2**31, 2**63])
    | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e-300, -0.0, 1e308])
    | st.text(max_size=30) | st.sampled_from(["tiny", "tiny:latest", "", "json", "../x", "a" * 300, "<|endoftext|>", "\x00"])
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "x"]), "content": values}), max_size=3)
options = st.dictionaries(st.sampled_from(OPTION_NAMES), values, max_size=4)


HI = [{"role": "user", "content": "hi"}]
VALID = {  # a working body per route: half the bodies are one of these with a field or two changed
    "/api/chat": {"model": "tiny", "messages": HI, "stream": False, "options": {"num_predict": 3}},
    "/api/generate": {"model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 3}},
    "/api/embed": {"model": "tiny", "input": "hi"},
    "/api/embeddings": {"model": "tiny", "prompt": "hi"},
    "/api/show": {"model": "tiny"},
    "/api/create": {"model": "fuzz", "from": "tiny", "system": "Be brief.", "stream": False},
    "/api/copy": {"source": "tiny", "destination": "fuzz"},
    "/api/delete": {"model": "fuzz"},
    "/v1/chat/completions": {"model": "tiny", "messages": HI, "max_tokens": 3},
    "/v1/completions": {"model": "tiny", "prompt": "hi", "max_tokens": 3},
    "/v1/embeddings": {"model": "tiny", "input": "hi"},
}


@st.composite
def requests(draw) -> tuple[str, str, bytes]:
    method, path = draw(st.sampled_from(sorted(ROUTES)))
    names = ROUTES[(method, path)]
    if draw(st.booleans()):
        body = json.loads(json.dumps(VALID[path]))
        for _ in range(draw(st.integers(1, 2))):
            if isinstance(body.get("options"), dict) and draw(st.booleans()):
                body["options"][draw(st.sampled_from(OPTION_NAMES))] = draw(values)
            else:
                body[draw(st.sampled_from(names))] = draw(values)
    else:
        body = draw(st.dictionaries(st.sampled_from(names) | st.text(max_size=10), values, max_size=6))
    if draw(st.booleans()):
        body["model"] = "tiny"
    if "messages" in names and draw(st.booleans()):
        body["messages"] = draw(messages)
    if "options" in names and draw(st.booleans()):
        body["options"] = draw(options)
    if path in ("/api/create", "/api/copy", "/api/delete"):  # keep the model the other requests use
        for key in ("model", "name", "destination"):
            if body.get(key) in ("tiny", "tiny:latest"):
                body[key] = "fuzz"
    if path in GENERATING and path.startswith("/api"):
        if isinstance(body.get("options"), dict):
            body["options"].setdefault("num_predict", 3)
        else:
            body.setdefault("options", {"num_predict": 3})
    elif path in GENERATING:
        body.setdefault("max_tokens", 3)
    raw = json.dumps(body).encode()
    raw = draw(st.sampled_from([raw] * 8 + [raw[: len(raw) // 2], b"", b"\xff\xfe", b"[]", b"null"]))
    return method, path, raw


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # A KV budget of 200 positions of the tiny model (512 bytes each): short answers fit, one
    # that may fill the 256-token context does not (test_a_kv_budget_...).
    live = serve_tiny(tmp_path_factory, max_seq_len=256, env={"YUNQUE_KV_BUDGET": "100KiB"})
    yield live
    live.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


# derandomize: CI sees the same 400 bodies every run (a new failure should not land on an unrelated
# change); explore further by hand with derandomize=False and a larger max_examples.
@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=requests())
def test_no_request_body_makes_a_500(http, request):
    method, path, raw = request
    r = http.request(method, path, content=raw)
    assert r.status_code < 500 or r.status_code in (501, 503), (method, path, raw[:300], r.text[:300])
    if r.headers.get("content-type", "").startswith("application/json"):
        r.json()  # every answer is well-formed JSON (NDJSON and SSE streams are checked by their clients)


def test_the_server_still_answers_correctly_after_the_battery(http, server):
    assert http.get("/api/version").status_code == 200
    r = http.post("/api/generate", json={"model": "tiny:latest", "prompt": "still here?", "stream": False, "options": {"num_predict": 2}})
    assert r.status_code == 200 and r.json()["done"]
    assert "Traceback" not in server.log.read_text()


def test_a_kv_budget_refuses_what_could_never_fit_and_serves_the_rest(http):
    """`yunque serve` with YUNQUE_KV_BUDGET: a request that may fill more KV cache than the whole
    budget is a 400 with the numbers; short ones are served, and /api/ps shows the KV in use."""
    long = {"model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": -1}}
    r = http.post("/api/generate", json=long)
    assert r.status_code == 400 and "KV cache, more than the server's budget of 100.0 KiB" in r.json()["error"]
    r = http.post("/api/generate", json={**long, "options": {"num_predict": 5}})
    assert r.status_code == 200 and r.json()["eval_count"] >= 1
    [loaded] = http.get("/api/ps").json()["models"]
    # Nothing decodes now: what KV is held is the prompt cache's parked rows.
    assert loaded["requests"]["running"] == 0 and loaded["size"] > 0
    assert loaded["kv_blocks_used"] == loaded["kv_blocks_cached"] and loaded["kv_blocks_total"] == 100 * 1024 // (16 * 512)
