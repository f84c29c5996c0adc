"""`prefixd serve` end to end: the real binary on 127.0.0.1, spoken to over
HTTP with the standard library (and once with the official OpenAI Node
client). Tasks are prompt-built prefixes made with `prefixd prefix
from-prompt`; greedy outputs are checked against `prefixd generate`."""
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import MODEL, ROOT, TOKENIZER, run
from server_util import TASKS, Server, generate, make_registry

BASE = "stories260K"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return make_registry(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, registry):
    tmp = tmp_path_factory.mktemp("server")
    with Server(tmp, registry, "--max-body-bytes", "4096", "--log-level", "debug") as s:
        yield s


def texts(resp):
    return [c["text"] for c in sorted(resp["choices"], key=lambda c: c["index"])]


def stream_texts(events):
    """Concatenated text and finish reason per choice index, from SSE payloads."""
    out, finish = {}, {}
    for e in events[:-1]:
        j = json.loads(e)
        assert j["object"] == "text_completion"
        for c in j["choices"]:
            out[c["index"]] = out.get(c["index"], "") + c["text"]
            if c["finish_reason"] is not None:
                assert c["index"] not in finish, "two finishing chunks"
                finish[c["index"]] = c["finish_reason"]
    return out, finish


# ---- health, models, prefixes ------------------------------------------------------------

def test_health_and_models(server):
    r = server.request("GET", "/health")
    assert r.status == 200 and r.json()["status"] == "ok"
    models = server.request("GET", "/v1/models").json()
    assert models["object"] == "list"
    ids = [m["id"] for m in models["data"]]
    assert ids[0] == BASE
    assert sorted(ids[1:]) == sorted(t for t, _ in TASKS)
    for m in models["data"]:
        assert m["object"] == "model" and m["owned_by"] == "prefixd"
        assert isinstance(m["created"], int)
    one = server.request("GET", "/v1/models/story")
    assert one.status == 200 and one.json()["id"] == "story"
    assert server.request("GET", "/v1/models/nope").status == 404


def test_prefixes_listing(server):
    data = server.request("GET", "/v1/prefixes").json()["data"]
    entry = next(e for e in data if e["task"] == "story")
    assert entry["num_virtual_tokens"] > 0
    assert entry["source"] == "prompt" and entry["has_bos"] is True
    assert entry["bytes"] > 0 and "created_at" in entry and "resident" in entry
    one = server.request("GET", "/v1/prefixes/story").json()
    assert one["task"] == "story" and one["num_virtual_tokens"] == entry["num_virtual_tokens"]
    assert server.request("GET", "/v1/prefixes/nope").status == 404


# ---- completions ---------------------------------------------------------------------------

def test_base_greedy_equals_generate(server):
    got = server.complete(model=BASE, prompt="Once upon a time", max_tokens=60, temperature=0)
    assert got["object"] == "text_completion" and got["id"].startswith("cmpl-")
    assert got["model"] == BASE
    assert texts(got) == [generate("Once upon a time", 60)]
    assert got["usage"]["completion_tokens"] == 60
    assert got["usage"]["total_tokens"] == got["usage"]["prompt_tokens"] + 60
    assert got["choices"][0]["finish_reason"] == "length"


def test_default_max_tokens_is_16(server):
    got = server.complete(model=BASE, prompt="Once upon a time", temperature=0)
    assert got["usage"]["completion_tokens"] == 16


@pytest.mark.parametrize("task,_", TASKS)
def test_task_greedy_equals_generate(server, registry, task, _):
    got = server.complete(model=task, prompt="One day", max_tokens=40, temperature=0)
    want = generate("One day", 40, "--registry", registry, "--task", task)
    assert texts(got) == [want]


def test_prompt_equivalence(server):
    """A prompt-built task continues exactly like its prompt written out."""
    task = server.complete(model="story", prompt="there was a", max_tokens=50, temperature=0)
    base = server.complete(model=BASE, prompt="Once upon a time there was a", max_tokens=50,
                           temperature=0)
    assert texts(task) == texts(base)


def test_seeded_sampling_repeats(server):
    p = dict(model="lily", prompt="One day", max_tokens=40, temperature=0.9, top_p=0.9,
             top_k=40, seed=123)
    a, b = server.complete(**p), server.complete(**p)
    assert texts(a) == texts(b)
    c = server.complete(**dict(p, seed=124))
    assert texts(c) != texts(a)


def test_prompt_array_and_n(server):
    got = server.complete(model="sun", prompt=["Tom went to the", "The bird"], n=2,
                          max_tokens=20, temperature=0)
    assert [c["index"] for c in got["choices"]] == [0, 1, 2, 3]
    t = texts(got)
    assert t[0] == t[1] and t[2] == t[3]  # greedy: the n copies agree
    assert t[0] == texts(server.complete(model="sun", prompt="Tom went to the", max_tokens=20,
                                         temperature=0))[0]
    assert got["usage"]["completion_tokens"] == 80


def test_token_id_prompt(server):
    """A prompt of token ids is used as is: [BOS] continues like the empty text prompt."""
    a = server.complete(model=BASE, prompt=[1], max_tokens=30, temperature=0)
    b = server.complete(model=BASE, prompt="", max_tokens=30, temperature=0)
    assert texts(a) == texts(b)
    c = server.complete(model=BASE, prompt=[[1], [1]], max_tokens=5, temperature=0)
    assert len(c["choices"]) == 2
    r = server.request("POST", "/v1/completions",
                       {"model": BASE, "prompt": [1, 10000], "max_tokens": 2})
    assert r.status == 400 and r.json()["error"]["param"] == "prompt"


def test_stop_strings(server):
    full = texts(server.complete(model=BASE, prompt="Once upon a time", max_tokens=60,
                                 temperature=0))[0]
    got = server.complete(model=BASE, prompt="Once upon a time", max_tokens=60, temperature=0,
                          stop=["Lily", "zzz"])
    c = got["choices"][0]
    assert c["finish_reason"] == "stop"
    assert c["text"] == full[:full.index("Lily")]
    assert got["usage"]["completion_tokens"] < 60
    one = server.complete(model=BASE, prompt="Once upon a time", max_tokens=60, temperature=0,
                          stop=".")
    assert one["choices"][0]["text"] == full[:full.index(".")]


def test_logprobs_shape(server):
    got = server.complete(model="dog", prompt="One day", max_tokens=12, temperature=0, logprobs=3)
    c = got["choices"][0]
    lp = c["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == \
        len(lp["text_offset"]) == 12
    assert "".join(lp["tokens"]) == c["text"]
    for tok, l, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert l <= 0 and 1 <= len(top) <= 3
        assert tok in top and abs(top[tok] - l) < 1e-5  # greedy: the chosen token is the top one
        assert max(top.values()) == top[tok]
    assert lp["text_offset"] == sorted(lp["text_offset"])
    assert lp["text_offset"][0] == len("One day")
    assert server.complete(model="dog", prompt="One day", max_tokens=3)["choices"][0][
        "logprobs"] is None


def test_echo(server):
    got = server.complete(model="cat", prompt="One day", max_tokens=10, temperature=0, echo=True)
    plain = server.complete(model="cat", prompt="One day", max_tokens=10, temperature=0)
    assert texts(got) == ["One day" + texts(plain)[0]]


# ---- streaming -----------------------------------------------------------------------------

STREAM_CASES = [
    dict(model=BASE, prompt="Once upon a time", max_tokens=80, temperature=0),
    dict(model="park", prompt="One day", max_tokens=50, temperature=0),
    dict(model="rain", prompt="One day", max_tokens=50, temperature=0.8, seed=9),
    dict(model=BASE, prompt="Once upon a time", max_tokens=80, temperature=0,
         stop=[" little g", "park."]),
    dict(model="toy", prompt=["One day", "Tim"], n=2, max_tokens=30, temperature=0.7, seed=3),
    dict(model="story", prompt="there was", max_tokens=20, temperature=0, logprobs=2),
    dict(model="story", prompt="there was", max_tokens=20, temperature=0, echo=True),
    # hot sampling that emits lone byte tokens (invalid UTF-8 -> U+FFFD) with these seeds
    dict(model=BASE, prompt="Once upon a time", max_tokens=450, temperature=2, seed=19,
         logprobs=0),
    dict(model=BASE, prompt="Once upon a time", max_tokens=450, temperature=2, seed=27,
         stop=["zq"]),
]


@pytest.mark.parametrize("params", STREAM_CASES)
def test_stream_concatenates_to_whole(server, params):
    whole = server.complete(**params)
    r, events = server.stream(**params)
    assert r.header("Content-Type").startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    assert "[DONE]" not in events[:-1]
    got, finish = stream_texts(events)
    for c in whole["choices"]:
        assert got[c["index"]] == c["text"], c["index"]
        assert finish[c["index"]] == c["finish_reason"]
    ids = {json.loads(e)["id"] for e in events[:-1]}
    assert len(ids) == 1 and ids.pop().startswith("cmpl-")
    if params.get("logprobs") is not None:
        toks = []
        for e in events[:-1]:
            for c in json.loads(e)["choices"]:
                toks += c["logprobs"]["tokens"]
        assert toks == whole["choices"][0]["logprobs"]["tokens"]


def test_stream_usage_chunk(server):
    params = dict(model="lily", prompt="One day", max_tokens=25, temperature=0)
    whole = server.complete(**params)
    _, events = server.stream(stream_options={"include_usage": True}, **params)
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"] == [] and last["usage"] == whole["usage"]
    for e in events[:-2]:
        assert json.loads(e)["usage"] is None
    _, plain = server.stream(**params)
    assert all("usage" not in json.loads(e) for e in plain[:-1])


def test_stream_is_incremental(server):
    """Events arrive as tokens are made: the first comes before the last is generated."""
    s = socket.create_connection(("127.0.0.1", server.port))
    body = json.dumps({"model": BASE, "prompt": "Once upon a time", "max_tokens": 300,
                       "temperature": 0, "stream": True}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    data = b""
    while b"data: " not in data:
        data += s.recv(65536)
    assert data.startswith(b"HTTP/1.1 200")
    assert b"chunked" in data.split(b"\r\n\r\n")[0].lower()
    while not data.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"):
        chunk = s.recv(65536)
        assert chunk, data[-200:]
        data += chunk
    s.close()
    assert data.count(b"data: ") > 2


# ---- concurrency ---------------------------------------------------------------------------

def test_concurrent_requests_equal_solo(server):
    models = [t for t, _ in TASKS] + [BASE]
    prompts = ["One day", "The big dog", "She was happy", "Mom said"]
    reqs = []
    for i in range(32):
        m = models[i % len(models)]
        p = prompts[i % len(prompts)]
        if m == BASE:
            p = "Once upon a time " + p
        reqs.append(dict(model=m, prompt=p, max_tokens=30 + (i % 5) * 10, temperature=0))
    solo = [texts(server.complete(**r)) for r in reqs]
    results = [None] * len(reqs)
    errors = []

    def worker(i):
        try:
            if i % 3 == 0:  # a third of them streamed
                _, ev = server.stream(**reqs[i])
                results[i] = [stream_texts(ev)[0][0]]
            else:
                results[i] = texts(server.complete(**reqs[i]))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for i, r in enumerate(reqs):
        assert results[i] == solo[i], r
    m = server.metrics()
    assert m['prefixd_batch_size_bucket{le="1"}'] < m["prefixd_batch_size_count"]


# ---- errors ---------------------------------------------------------------------------------

def err(r, status):
    assert r.status == status, (r.status, r.body)
    e = r.json()["error"]
    assert set(e) == {"message", "type", "param", "code"}
    assert e["message"]
    return e


def test_unknown_task_404(server):
    e = err(server.request("POST", "/v1/completions", {"model": "nope", "prompt": "x"}), 404)
    assert e["code"] == "model_not_found" and e["param"] == "model" and "nope" in e["message"]
    e = err(server.request("POST", "/v1/completions", {"model": "../etc", "prompt": "x"}), 404)


def test_malformed_json_400(server):
    r = server.request("POST", "/v1/completions", '{"model": "story",\n "prompt": }',
                       headers={"Content-Type": "application/json"})
    e = err(r, 400)
    assert "line 2" in e["message"] and "column" in e["message"]
    err(server.request("POST", "/v1/completions", "[1, 2]"), 400)
    err(server.request("POST", "/v1/completions", ""), 400)


@pytest.mark.parametrize("field,value", [
    ("max_tokens", "ten"), ("max_tokens", 1.5), ("max_tokens", 0), ("temperature", "hot"),
    ("temperature", 5), ("top_p", 0), ("top_k", -1), ("n", 0), ("n", 1000), ("stream", "yes"),
    ("stop", 3), ("stop", ["a", "b", "c", "d", "e"]), ("stop", [""]), ("logprobs", 6),
    ("seed", "x"), ("echo", 1), ("prompt", 5), ("prompt", []), ("prompt", [["x"]]),
    ("model", 7), ("stream_options", {"include_usage": True}), ("presence_penalty", 1),
    ("logit_bias", {"50": 1}),
])
def test_wrong_types_400(server, field, value):
    body = {"model": "story", "prompt": "One day", "max_tokens": 5}
    body[field] = value
    e = err(server.request("POST", "/v1/completions", body), 400)
    assert e["param"] in (field, "n"), e
    assert e["type"] == "invalid_request_error"


def test_missing_fields_400(server):
    e = err(server.request("POST", "/v1/completions", {"prompt": "x"}), 400)
    assert e["param"] == "model"
    e = err(server.request("POST", "/v1/completions", {"model": "story"}), 400)
    assert e["param"] == "prompt"
    # a prompt-built prefix needs at least one token of the request's own
    e = err(server.request("POST", "/v1/completions", {"model": "story", "prompt": ""}), 400)
    assert "empty" in e["message"]


def test_context_exceeded_400(server):
    e = err(server.request("POST", "/v1/completions",
                           {"model": "story", "prompt": "One day", "max_tokens": 600}), 400)
    assert e["code"] == "context_length_exceeded"
    assert "512" in e["message"] and "600" in e["message"]


def test_oversized_body_413(server):
    big = {"model": "story", "prompt": "x" * 8000}
    err(server.request("POST", "/v1/completions", big), 413)
    # declared length over the limit: answered from the headers, body never read
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
    head = s.recv(4096)
    s.close()
    assert head.startswith(b"HTTP/1.1 413")
    # chunked upload past the limit
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(3):
        s.sendall(b"1000\r\n" + b"a" * 4096 + b"\r\n")
    s.sendall(b"0\r\n\r\n")
    head = s.recv(4096)
    s.close()
    assert head.startswith(b"HTTP/1.1 413")


def test_unknown_path_and_method(server):
    err(server.request("GET", "/v2/nothing"), 404)
    r = server.request("GET", "/v1/completions")
    err(r, 405)
    assert r.header("Allow") == "POST"
    r = server.request("POST", "/v1/prefixes/story")
    err(r, 405)
    assert set(r.header("Allow").split(", ")) == {"GET", "HEAD", "PUT", "DELETE"}


def test_metrics(server):
    server.complete(model="story", prompt="One day", max_tokens=5)
    server.request("POST", "/v1/completions", {"model": "nope", "prompt": "x"})
    r = server.request("GET", "/metrics")
    assert r.header("Content-Type").startswith("text/plain; version=0.0.4")
    text = r.body.decode()
    for name in ["prefixd_requests_total", "prefixd_tokens_generated_total",
                 "prefixd_prompt_tokens_total", "prefixd_request_duration_seconds",
                 "prefixd_time_to_first_token_seconds", "prefixd_queue_depth",
                 "prefixd_running_sequences", "prefixd_batch_size", "prefixd_sequences_freed_total",
                 "prefixd_cancelled_total", "prefixd_registry_resident_bytes",
                 "prefixd_registry_loads_total", "prefixd_registry_load_failures_total"]:
        assert f"# TYPE {name} " in text, name
    m = server.metrics()
    assert m['prefixd_requests_total{task="story",status="200"}'] >= 1
    assert m['prefixd_requests_total{task="_none",status="404"}'] >= 1
    assert m['prefixd_tokens_generated_total{task="story"}'] >= 5
    assert m['prefixd_request_duration_seconds_count{task="story"}'] >= 1
    assert m['prefixd_request_duration_seconds_bucket{task="story",le="+Inf"}'] == \
        m['prefixd_request_duration_seconds_count{task="story"}']
    assert m["prefixd_registry_tasks"] >= len(TASKS)
    assert m["prefixd_ready"] == 1
    samples = [line.rpartition(" ")[0] for line in text.splitlines()
               if line and not line.startswith("#")]
    assert len(samples) == len(set(samples)), "duplicate series"
    assert m['prefixd_http_requests_total{method="GET",route="/health",status="200"}'] >= 1


def test_client_disconnect_frees_sequence(server):
    before = server.metrics()
    s = socket.create_connection(("127.0.0.1", server.port))
    body = json.dumps({"model": "story", "prompt": "there was", "max_tokens": 480,
                       "temperature": 0, "stream": True}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    data = b""
    while b"data: " not in data:
        data += s.recv(4096)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()  # RST: the client is gone mid-stream
    deadline = time.time() + 10
    while time.time() < deadline:
        m = server.metrics()
        if m.get('prefixd_requests_total{task="story",status="499"}', 0) > \
                before.get('prefixd_requests_total{task="story",status="499"}', 0) and \
                m["prefixd_running_sequences"] == 0:
            break
        time.sleep(0.05)
    assert m['prefixd_requests_total{task="story",status="499"}'] == \
        before.get('prefixd_requests_total{task="story",status="499"}', 0) + 1
    assert m["prefixd_cancelled_total"] == before["prefixd_cancelled_total"] + 1
    assert m["prefixd_sequences_freed_total"] >= before["prefixd_sequences_freed_total"] + 1
    assert m["prefixd_running_sequences"] == 0
    # fewer tokens were made than asked for
    made = m['prefixd_tokens_generated_total{task="story"}'] - \
        before['prefixd_tokens_generated_total{task="story"}']
    assert made < 480


# ---- prefixes over HTTP ---------------------------------------------------------------------

def test_put_from_prompt_is_servable_at_once(server):
    r = server.request("PUT", "/v1/prefixes/frog", {"from_prompt": "The frog sat on a log."})
    assert r.status == 201, r.body
    e = r.json()
    assert e["task"] == "frog" and e["source"] == "prompt" and e["num_virtual_tokens"] > 0
    got = server.complete(model="frog", prompt="One day", max_tokens=30, temperature=0)
    base = server.complete(model=BASE, prompt="The frog sat on a log. One day", max_tokens=30,
                           temperature=0)
    assert texts(got) == texts(base)
    assert server.request("PUT", "/v1/prefixes/frog", {"from_prompt": "A frog."}).status == 200
    assert "frog" in [m["id"] for m in server.request("GET", "/v1/models").json()["data"]]
    e = err(server.request("PUT", "/v1/prefixes/frog", {"from_prompt": ""}), 400)
    e = err(server.request("PUT", "/v1/prefixes/frog", {"prompt": "x"}), 400)
    e = err(server.request("PUT", "/v1/prefixes/bad%20name", {"from_prompt": "x"}), 400)
    e = err(server.request("PUT", f"/v1/prefixes/{BASE}", {"from_prompt": "x"}), 409)
    assert server.request("DELETE", "/v1/prefixes/frog").status == 200


def test_put_file_delete_and_corrupt(server, tmp_path):
    src = tmp_path / "src"
    make_registry(src, [("orig", "The bird sang a song.")])
    data = (src / "orig.safetensors").read_bytes()
    r = server.request("PUT", "/v1/prefixes/uploaded", data,
                       headers={"Content-Type": "application/octet-stream"})
    assert r.status == 201, r.body
    assert r.json()["task"] == "uploaded"
    first = texts(server.complete(model="uploaded", prompt="One day", max_tokens=30,
                                  temperature=0))
    want = generate("One day", 30, "--prefix", str(src / "orig.safetensors"))
    assert first == [want]

    # a corrupt file is refused, and the old version keeps serving
    for bad in [data[:len(data) // 2], b"not a safetensors file at all", data[:8] + b"{" * 50]:
        e = err(server.request("PUT", "/v1/prefixes/uploaded", bad,
                               headers={"Content-Type": "application/octet-stream"}), 400)
        assert e["message"]
    assert texts(server.complete(model="uploaded", prompt="One day", max_tokens=30,
                                 temperature=0)) == first

    r = server.request("DELETE", "/v1/prefixes/uploaded")
    assert r.status == 200 and r.json() == {"id": "uploaded", "object": "prefix", "deleted": True}
    err(server.request("POST", "/v1/completions", {"model": "uploaded", "prompt": "x"}), 404)
    err(server.request("GET", "/v1/prefixes/uploaded"), 404)
    err(server.request("DELETE", "/v1/prefixes/uploaded"), 404)


def test_hot_load_from_directory(server, tmp_path):
    src = tmp_path / "src"
    make_registry(src, [("dropped", "The moon was big.")])
    tmp = os.path.join(server.registry, ".dropped.tmp")
    shutil.copy(src / "dropped.safetensors", tmp)
    os.rename(tmp, os.path.join(server.registry, "dropped.safetensors"))
    deadline = time.time() + 10
    while time.time() < deadline:
        if server.request("GET", "/v1/prefixes/dropped").status == 200:
            break
        time.sleep(0.05)
    server.complete(model="dropped", prompt="One day", max_tokens=5)
    os.unlink(os.path.join(server.registry, "dropped.safetensors"))
    deadline = time.time() + 10
    while time.time() < deadline:
        if server.request("GET", "/v1/prefixes/dropped").status == 404:
            break
        time.sleep(0.05)
    err(server.request("POST", "/v1/completions", {"model": "dropped", "prompt": "x"}), 404)


# ---- auth -----------------------------------------------------------------------------------

def test_auth(tmp_path, registry):
    with Server(tmp_path, registry, "--api-key", "user-key-123", "--api-key",
                "admin:admin-key-456", "--log-level", "debug", keys=["user-key-123"]) as s:
        assert s.request("GET", "/health", key="").status == 200
        assert s.request("GET", "/metrics", key="").status == 200
        body = {"model": "story", "prompt": "One day", "max_tokens": 3}
        e = err(s.request("POST", "/v1/completions", body, key=""), 401)
        e = err(s.request("POST", "/v1/completions", body, key="user-key-12"), 401)
        assert e["code"] == "invalid_api_key"
        err(s.request("POST", "/v1/completions", body, key="user-key-1234"), 401)
        err(s.request("GET", "/v1/models", key="wrong"), 401)
        assert s.request("POST", "/v1/completions", body).status == 200
        assert s.request("GET", "/v1/models").status == 200
        e = err(s.request("PUT", "/v1/prefixes/authz", {"from_prompt": "Hello."}), 403)
        assert "admin" in e["message"]
        err(s.request("DELETE", "/v1/prefixes/story"), 403)
        r = s.request("PUT", "/v1/prefixes/authz", {"from_prompt": "Hello."},
                      key="admin-key-456")
        assert r.status == 201
        assert s.request("POST", "/v1/completions", dict(body, model="authz"),
                         key="admin-key-456").status == 200
        assert s.request("DELETE", "/v1/prefixes/authz", key="admin-key-456").status == 200
        logs = s.stop()
    assert "user-key-123" not in logs and "admin-key-456" not in logs


def test_api_keys_from_config(tmp_path, registry):
    cfg = {"api_keys": ["plain", {"key": "boss", "admin": True}]}
    with Server(tmp_path, registry, config=cfg, keys=["plain"]) as s:
        assert s.request("PUT", "/v1/prefixes/k", {"from_prompt": "Hi."}).status == 403
        assert s.request("PUT", "/v1/prefixes/k", {"from_prompt": "Hi."}, key="boss").status \
            == 201
        assert s.request("DELETE", "/v1/prefixes/k", key="boss").status == 200


# ---- overload, shutdown, configuration -------------------------------------------------------

def test_overload_429(tmp_path, registry):
    with Server(tmp_path, registry, "--queue-limit", "1", "--max-seqs", "1") as s:
        results = []
        lock = threading.Lock()

        def worker():
            r = s.request("POST", "/v1/completions",
                          {"model": "story", "prompt": "there was", "max_tokens": 450,
                           "temperature": 0})
            with lock:
                results.append(r)

        threads = [threading.Thread(target=worker) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        statuses = sorted(r.status for r in results)
        assert 200 in statuses and 429 in statuses, statuses
        assert set(statuses) <= {200, 429}
        for r in results:
            if r.status == 429:
                e = err(r, 429)
                assert r.header("Retry-After") == "1"
                assert e["code"] == "queue_full"
        m = s.metrics()
        assert m['prefixd_requests_total{task="story",status="429"}'] == statuses.count(429)


def test_sigterm_lets_running_requests_finish(tmp_path, registry):
    s = Server(tmp_path, registry, config={"shutdown_grace_ms": 60000})
    results = []

    def worker():
        results.append(s.request("POST", "/v1/completions",
                                 {"model": "story", "prompt": "there was", "max_tokens": 450,
                                  "temperature": 0, "n": 4}))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.time() + 5
    while time.time() < deadline and not results:  # until all 12 sequences are in
        m = s.metrics()
        if m["prefixd_running_sequences"] + m["prefixd_queue_depth"] == 12:
            break
        time.sleep(0.001)
    s.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    s.stop()  # asserts exit status 0
    assert [r.status for r in results] == [200, 200, 200], [r.body for r in results]
    for r in results:
        assert all(c["finish_reason"] == "length" for c in r.json()["choices"])


def test_sigterm_cancels_after_grace(tmp_path, registry):
    """With no grace, running requests are cancelled at once and answered 503."""
    s = Server(tmp_path, registry, "--shutdown-grace-ms", "0", "--max-seqs", "1")
    results = []

    def worker():
        results.append(s.request("POST", "/v1/completions",
                                 {"model": "story", "prompt": "there was", "max_tokens": 450,
                                  "temperature": 0, "n": 8}))

    t = threading.Thread(target=worker)
    t.start()
    deadline = time.time() + 5
    while time.time() < deadline and not results:
        if s.metrics()["prefixd_running_sequences"] > 0:
            break
        time.sleep(0.001)
    s.proc.send_signal(signal.SIGTERM)
    t.join(60)
    s.stop()
    if results[0].status == 200:
        pytest.skip("the request finished before the signal arrived")
    e = err(results[0], 503)
    assert e["code"] == "shutting_down"


def test_loading_state(tmp_path, registry):
    """/health is 503 "loading" (and the API 503) until the model is loaded: the model
    path is a FIFO, so loading blocks until something opens its other end. SIGTERM then
    exits at once, with status 0."""
    fifo = str(tmp_path / "model.bin")
    os.mkfifo(fifo)
    s = Server(tmp_path, registry, config={"model": fifo}, wait=False)
    try:
        deadline = time.time() + 10
        r = None
        while time.time() < deadline:
            try:
                r = s.request("GET", "/health")
                break
            except OSError:
                time.sleep(0.02)
        assert r is not None and r.status == 503 and r.json() == {"status": "loading"}
        e = err(s.request("GET", "/v1/models"), 503)
        assert e["code"] == "model_loading"
        assert s.metrics()["prefixd_ready"] == 0
    finally:
        s.proc.send_signal(signal.SIGTERM)  # while loading: nothing to finish, exit 0 at once
        try:
            code = s.proc.wait(10)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait()
            raise
        s.log.close()
    assert code == 0, s.logs()


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": "m", "bogus_key": 1}')
    p = run("serve", "--config", str(bad), check=False)
    assert p.returncode == 1 and 'unknown key "bogus_key"' in p.stderr
    bad.write_text('{"model": "m",\n "threads": }')
    p = run("serve", "--config", str(bad), check=False)
    assert p.returncode == 1 and f"{bad}:2:" in p.stderr
    bad.write_text('{"max_seqs": "many"}')
    p = run("serve", "--config", str(bad), check=False)
    assert p.returncode == 1 and "max_seqs" in p.stderr
    bad.write_text('{"model": "m", "kv_dtype": "f8"}')
    p = run("serve", "--config", str(bad), check=False)
    assert p.returncode == 1 and "kv_dtype: 'f8' is not one of f32, f16" in p.stderr, p.stderr
    p = run("serve", "--config", str(bad), "--no-such-flag", "1", check=False)
    assert p.returncode == 2 and "--no-such-flag" in p.stderr
    p = run("serve", "--help", check=False)
    assert p.returncode == 0 and "--listen" in p.stdout
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"model": MODEL, "tokenizer": TOKENIZER,
                                "registry": str(tmp_path / "r"), "data": str(tmp_path / "d"),
                                "listen": "127.0.0.1:0", "context": 100000}))
    p = run("serve", "--config", str(good), check=False)
    assert p.returncode == 1 and "context" in p.stderr


def test_context_flag_caps_requests(tmp_path, registry):
    with Server(tmp_path, registry, "--context", "64") as s:
        e = err(s.request("POST", "/v1/completions",
                          {"model": BASE, "prompt": "Once upon a time", "max_tokens": 60}), 400)
        assert "64" in e["message"]
        assert s.request("POST", "/v1/completions",
                         {"model": BASE, "prompt": "Once upon a time",
                          "max_tokens": 50}).status == 200


# ---- the official OpenAI client ---------------------------------------------------------------

def test_openai_node_client(server):
    node = shutil.which("node")
    if not node:
        pytest.skip("node is not installed")
    e2e = os.path.join(ROOT, "tests", "e2e")
    if not os.path.isdir(os.path.join(e2e, "node_modules", "openai")):
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=e2e,
                       check=True, timeout=300)
    want = texts(server.complete(model="story", prompt="there was", max_tokens=20,
                                 temperature=0))[0]
    env = dict(os.environ, PREFIXD_URL=server.url)
    p = subprocess.run([node, os.path.join(e2e, "openai_client.mjs")], capture_output=True,
                       text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["completion"]["model"] == "story"
    assert out["completion"]["text"] == want
    assert out["completion"]["finish_reason"] == "length"
    assert out["completion"]["usage"]["completion_tokens"] == 20
    assert out["stream"]["text"] == want
    assert out["stream"]["chunks"] >= 1
    assert out["stream"]["usage"]["completion_tokens"] == 20
    assert out["models"][0] == BASE and "story" in out["models"]
    assert out["error"]["status"] == 404
