"""The paged KV cache over HTTP, on the shipped model: a pool far smaller than
the waiting requests serves them all in turn with the same answers as alone,
and every block comes back to the pool (asserted through /metrics) after
cancels, client disconnects, stop strings, scoring, prefix builds and
refused requests. The prompt-cache tests run with the KV cache in F32 and in
F16 (kv_dtype): a hit gives the same bits as a miss under either."""
import json
import socket
import threading
import time

import pytest

from server_util import Server, make_registry

STORY = "Once upon a time"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return make_registry(tmp_path_factory.mktemp("registry"), [("story", STORY)])


def wait_idle(s, timeout=20):
    """Metrics once no sequence runs and none waits."""
    deadline = time.time() + timeout
    while True:
        m = s.metrics()
        if m["prefixd_running_sequences"] == 0 and m["prefixd_queue_depth"] == 0:
            return m
        assert time.time() < deadline, m
        time.sleep(0.02)


def assert_pool_full(s):
    m = wait_idle(s)
    assert m["prefixd_kv_blocks_total"] > 0
    assert m["prefixd_kv_blocks_used"] == 0, m
    assert m["prefixd_kv_blocks_reserved"] == 0, m
    assert m["prefixd_kv_blocks_free"] == m["prefixd_kv_blocks_total"], m
    return m


def test_small_pool_serves_everyone_in_turn(tmp_path, registry):
    """1 MiB of blocks (51 blocks of 16 tokens on this model) holds 3 requests of
    prompt + 300 tokens; 12 at once wait in the queue, none fails, each answer
    equals the one it gets alone, and the pool never goes over its size."""
    with Server(tmp_path, registry, config={"kv_budget_mb": 1}) as s:
        m = s.metrics()
        total = m["prefixd_kv_blocks_total"]
        per_req = (4 + 300 + 15) // 16 + 1  # ceil((prompt + 300) / 16), prompt <= 16 tokens
        assert total < 4 * per_req, total
        bodies = [{"model": "story" if i % 2 else "stories260K", "prompt": f"Tim had {i} toys",
                   "max_tokens": 300, "temperature": 0} for i in range(12)]
        alone = [s.complete(**b)["choices"][0]["text"] for b in bodies[:2]]
        results = [None] * len(bodies)
        peak = {"used": 0, "queued": 0}

        def worker(i):
            results[i] = s.request("POST", "/v1/completions", bodies[i], timeout=120)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            m = s.metrics()
            peak["used"] = max(peak["used"], m["prefixd_kv_blocks_used"] +
                               m["prefixd_kv_blocks_reserved"])
            peak["queued"] = max(peak["queued"], m["prefixd_queue_depth"])
            time.sleep(0.01)
        for t in threads:
            t.join()
        assert [r.status for r in results] == [200] * len(bodies), \
            [r.body for r in results if r.status != 200]
        assert peak["used"] <= total
        assert peak["queued"] > 0, "the pool should have made requests wait"
        for i in range(2):
            assert results[i].json()["choices"][0]["text"] == alone[i]
        assert_pool_full(s)


def test_no_block_leaks(tmp_path, registry):
    with Server(tmp_path, registry, config={"kv_budget_mb": 2}) as s:
        # finished by length and by stop string, scored prompt, n > 1
        s.complete(model="story", prompt="The dog", max_tokens=20, temperature=0)
        s.complete(model="story", prompt="The dog", max_tokens=200, temperature=0, stop=[" the"])
        s.complete(model="story", prompt="The dog ran", max_tokens=1, echo=True, logprobs=2)
        s.complete(model="stories260K", prompt=["a", "b"], max_tokens=30, n=2, temperature=1,
                   seed=3)
        # a prefix built on the engine thread
        r = s.request("PUT", "/v1/prefixes/frog", {"from_prompt": "The frog sat on a log."})
        assert r.status in (200, 201), r.body
        # refused requests never reach the pool
        r = s.request("POST", "/v1/completions",
                      {"model": "story", "prompt": "x", "max_tokens": 100000})
        assert r.status == 400
        # a client that goes away mid-stream
        sock = socket.create_connection(("127.0.0.1", s.port))
        body = json.dumps({"model": "story", "prompt": "there was", "max_tokens": 400,
                           "temperature": 0, "stream": True}).encode()
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: " +
                     str(len(body)).encode() + b"\r\n\r\n" + body)
        data = b""
        while b"data: " not in data:
            data += sock.recv(4096)
        m = s.metrics()
        assert m["prefixd_kv_blocks_used"] > 0
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
        assert_pool_full(s)
        # requests queued behind a full pool, then all cancelled by disconnecting
        socks = []
        for i in range(6):
            c = socket.create_connection(("127.0.0.1", s.port))
            b = json.dumps({"model": "story", "prompt": f"day {i}", "max_tokens": 450,
                            "temperature": 0, "stream": True}).encode()
            c.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nContent-Length: " +
                      str(len(b)).encode() + b"\r\n\r\n" + b)
            socks.append(c)
        deadline = time.time() + 10
        while s.metrics()["prefixd_queue_depth"] == 0 and time.time() < deadline:
            time.sleep(0.01)
        for c in socks:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.close()
        assert_pool_full(s)
        freed = s.metrics()["prefixd_sequences_freed_total"]
        assert freed >= 8


# ---- the prompt cache ----

LONG = ("Lily and Ben went to the park. They saw a big red ball under a tree. Ben wanted "
        "the ball, but Lily said they must share. They played with the ball all day and "
        "had fun. When the sun went down, they went home to eat. ")
LONG2 = ("Tom had a little dog named Max. Max liked to run and jump in the grass. One day "
         "Max ran away and Tom was sad. He looked everywhere for his dog. ")


def cached(resp):
    return resp["usage"]["prompt_tokens_details"]["cached_tokens"]


def answer(resp):
    """Texts and every token's logprobs (floats: compared for equality)."""
    return [(c["text"], c["logprobs"]) for c in sorted(resp["choices"], key=lambda c: c["index"])]


@pytest.fixture(scope="module", params=["f32", "f16"])
def server(request, tmp_path_factory, registry):
    with Server(tmp_path_factory.mktemp("server"), registry,
                config={"kv_dtype": request.param}) as s:
        s.kv_dtype = request.param
        yield s


def test_kv_dtype_in_metrics(server):
    """/metrics names the KV dtype; a block is 16 tokens x every layer x keys and
    values x the dtype's bytes (stories260K: 5 layers, kv_dim 32)."""
    m = server.metrics()
    assert m['prefixd_kv_dtype{dtype="%s"}' % server.kv_dtype] == 1
    size = 2 if server.kv_dtype == "f16" else 4
    assert m["prefixd_kv_block_bytes"] == 16 * 5 * 2 * 32 * size


@pytest.mark.parametrize("sampling", [dict(temperature=0),
                                      dict(temperature=0.9, top_p=0.9, top_k=40, seed=7)])
@pytest.mark.parametrize("model", ["stories260K", "story"])
def test_hit_gives_the_same_answer(server, sampling, model):
    p = dict(model=model, prompt=("Sam" if "seed" in sampling else "Ann") + " " + model + " " + LONG,
             max_tokens=40, logprobs=3,
             **sampling)
    m0 = server.metrics()
    a = server.complete(**p)
    b = server.complete(**p)
    m1 = server.metrics()
    assert cached(a) == 0
    n = a["usage"]["prompt_tokens"]
    assert n > 48
    assert cached(b) == (n - 1) // 16 * 16  # whole blocks, the last token prefilled
    assert answer(a) == answer(b)
    assert m1["prefixd_prompt_cache_hits_total"] == m0["prefixd_prompt_cache_hits_total"] + 1
    assert m1["prefixd_prompt_cache_tokens_total"] == \
        m0["prefixd_prompt_cache_tokens_total"] + cached(b)
    # a longer prompt sharing the start reuses the shared blocks
    c = server.complete(**dict(p, prompt=p["prompt"] + " And then they slept."))
    assert cached(c) >= cached(b) - 16 and cached(c) > 0


def test_hit_equals_the_command_line(server):
    """The greedy answer with a hit is the command line's (an independent run,
    with its KV cache in the same dtype)."""
    from server_util import generate
    server.complete(model="stories260K", prompt=LONG2, max_tokens=30, temperature=0)
    r = server.complete(model="stories260K", prompt=LONG2, max_tokens=30, temperature=0)
    assert cached(r) > 0
    extra = ("--kv-f16",) if server.kv_dtype == "f16" else ()
    assert r["choices"][0]["text"] == generate(LONG2, 30, *extra)


def test_entries_never_cross_tasks(server, tmp_path):
    prompt = "Cross " + LONG2
    server.complete(model="story", prompt=prompt, max_tokens=5, temperature=0)
    assert cached(server.complete(model="story", prompt=prompt, max_tokens=5,
                                  temperature=0)) > 0
    base = server.complete(model="stories260K", prompt=prompt, max_tokens=5, temperature=0)
    assert cached(base) == 0
    r = server.request("PUT", "/v1/prefixes/other", {"from_prompt": "A big dog ran."})
    assert r.status in (200, 201), r.body
    assert cached(server.complete(model="other", prompt=prompt, max_tokens=5,
                                  temperature=0)) == 0


def test_hot_replaced_prefix_never_uses_old_entries(server):
    prompt = "Swap " + LONG
    r = server.request("PUT", "/v1/prefixes/swap", {"from_prompt": "The sun was hot."})
    assert r.status in (200, 201), r.body
    server.complete(model="swap", prompt=prompt, max_tokens=5, temperature=0)
    assert cached(server.complete(model="swap", prompt=prompt, max_tokens=5, temperature=0)) > 0
    r = server.request("PUT", "/v1/prefixes/swap", {"from_prompt": "It was a rainy day."})
    assert r.status in (200, 201), r.body
    fresh = server.complete(model="swap", prompt=prompt, max_tokens=20, temperature=0, logprobs=2)
    assert cached(fresh) == 0
    again = server.complete(model="swap", prompt=prompt, max_tokens=20, temperature=0, logprobs=2)
    assert cached(again) > 0
    assert answer(fresh) == answer(again)


def test_chat_reports_cached_tokens(server):
    msgs = [{"role": "system", "content": LONG}, {"role": "user", "content": "Who went?"}]
    r1 = server.request("POST", "/v1/chat/completions",
                        {"model": "stories260K", "messages": msgs, "max_tokens": 10,
                         "temperature": 0})
    r2 = server.request("POST", "/v1/chat/completions",
                        {"model": "stories260K", "messages": msgs, "max_tokens": 10,
                         "temperature": 0})
    assert r1.status == 200 and r2.status == 200, (r1.body, r2.body)
    a, b = r1.json(), r2.json()
    assert cached(b) > 0
    assert a["choices"][0]["message"] == b["choices"][0]["message"]


@pytest.mark.parametrize("kv_dtype", ["f32", "f16"])
def test_eviction_pressure_keeps_answers(tmp_path, registry, kv_dtype):
    """A 1 MiB pool (51 blocks in F32, 102 in F16) and many distinct long
    prompts: cached blocks are evicted and reused; every answer stays the one
    the prompt gets on a fresh server, hit or not."""
    prompts = [f"{i} " + LONG for i in range(8 if kv_dtype == "f32" else 16)]
    with Server(tmp_path, registry, config={"kv_budget_mb": 1, "kv_dtype": kv_dtype}) as s:
        first = [s.complete(model="story", prompt=p, max_tokens=30, temperature=0, logprobs=2)
                 for p in prompts]
        again = [s.complete(model="story", prompt=p, max_tokens=30, temperature=0, logprobs=2)
                 for p in reversed(prompts)][::-1]
        m = s.metrics()
        assert m["prefixd_prompt_cache_evictions_total"] > 0
        assert any(cached(r) > 0 for r in again)
        assert [answer(r) for r in first] == [answer(r) for r in again]
        assert_pool_full(s)


def test_put_from_prompt_dtype_f16(tmp_path):
    """PUT {"from_prompt", "dtype": "f16"} writes the file as F16 like the command
    line's --f16: half the bytes, and the same greedy answers as the command line's
    F16 file of the same text."""
    from conftest import MODEL, TOKENIZER, run
    reg = tmp_path / "reg"
    reg.mkdir()
    text = "Lily and Ben were friends."
    run("prefix", "from-prompt", "--model", MODEL, "--tokenizer", TOKENIZER, "--task", "cli16",
        "--text", text, "--out", str(reg), "--f16")
    with Server(tmp_path, str(reg)) as s:
        r32 = s.request("PUT", "/v1/prefixes/h32", {"from_prompt": text})
        r16 = s.request("PUT", "/v1/prefixes/h16", {"from_prompt": text, "dtype": "f16"})
        assert r32.status == 201 and r16.status == 201, (r32.body, r16.body)
        b32, b16 = r32.json()["bytes"], r16.json()["bytes"]
        assert b16 < 0.7 * b32, (b16, b32)
        bad = s.request("PUT", "/v1/prefixes/h8", {"from_prompt": text, "dtype": "f8"})
        assert bad.status == 400 and bad.json()["error"]["param"] == "dtype"
        outs = {t: s.complete(model=t, prompt=" One day", max_tokens=40, temperature=0,
                              logprobs=1)["choices"][0]
                for t in ("cli16", "h16", "h32")}
        assert outs["h16"] == outs["cli16"]
        assert outs["h16"]["text"]  # and it serves


def test_put_from_prompt_under_f16_kv(tmp_path):
    """Under kv_dtype f16 a prompt-built prefix is the prompt's F16 cache, so its
    values are halves already: the F32 and the F16 file of it serve the same
    bits (the registry holds both as halves: resident bytes half the F32 file's)."""
    reg = tmp_path / "reg"
    reg.mkdir()
    text = "Lily and Ben were friends."
    with Server(tmp_path, str(reg), config={"kv_dtype": "f16"}) as s:
        r32 = s.request("PUT", "/v1/prefixes/h32", {"from_prompt": text})
        r16 = s.request("PUT", "/v1/prefixes/h16", {"from_prompt": text, "dtype": "f16"})
        assert r32.status == 201 and r16.status == 201, (r32.body, r16.body)
        assert r16.json()["bytes"] < 0.7 * r32.json()["bytes"]
        outs = {t: s.complete(model=t, prompt=" One day", max_tokens=40, temperature=0,
                              logprobs=2)["choices"][0]
                for t in ("h16", "h32")}
        assert outs["h16"] == outs["h32"]
        assert outs["h16"]["text"]
        m = s.metrics()
        assert m["prefixd_registry_resident_prefixes"] == 2
        # stories260K: 5 layers x 2 x kv_dim 32 halves per slot, plus bookkeeping
        n_slots = r32.json()["num_virtual_tokens"]
        assert m["prefixd_registry_resident_bytes"] < 2 * (n_slots * 5 * 2 * 32 * 2 + 4096)
