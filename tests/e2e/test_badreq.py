"""The bad-request suite: every case of tests/e2e/badreq/cases.json (each route
crossed with NUL and control bytes in its path, query and headers, plus wrong
types, every limit, stalls and malformed HTTP) is sent over a raw socket to a
real `prefixd serve`; its status and OpenAI error shape (`param`, `code`) are
checked, and after each one /health must answer and the registry, the
uploaded files and the job store must be exactly as before.

Also here: a client holding more idle connections than the per-client cap
does not keep another client (another source address, 127.0.0.2) from a
completion within 2 s."""
import hashlib
import json
import os
import socket
import sqlite3
import time

import pytest

from server_util import Server
from test_training import multipart

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = os.path.join(HERE, "badreq", "cases.json")
ADMIN = "adm-key-1234567890"
USER = "usr-key-0987654321"
TIMEOUT_S = 1  # request_timeout_s of the server under test
CONFIG = {"api_keys": [{"key": ADMIN, "admin": True}, USER], "request_timeout_s": TIMEOUT_S,
          "max_body_bytes": 4096, "max_prefix_bytes": 4096, "max_file_bytes": 65536,
          "max_connections": 64, "max_connections_per_client": 48}


# ---- raw HTTP ----------------------------------------------------------------------------------

def read_response(sock, deadline):
    """(status or None, headers dict, body bytes) of one response; None when the server
    closed the connection without answering."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        sock.settimeout(max(0.05, deadline - time.time()))
        try:
            b = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            b = b""
        if not b:
            if not buf:
                return None, {}, b""
            break
        buf += b
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    while len(body) < n:
        sock.settimeout(max(0.05, deadline - time.time()))
        b = sock.recv(65536)
        if not b:
            break
        body += b
    return status, headers, body


def send_raw(port, data, wait=5.0, dribble=False, src=None):
    """Sends data (bytes) and returns (status, headers, body, seconds)."""
    t0 = time.time()
    with socket.create_connection(("127.0.0.1", port), timeout=wait,
                                  source_address=(src, 0) if src else None) as s:
        try:
            if dribble:  # in small pieces, well inside the request deadline
                for i in range(0, len(data), 16):
                    s.sendall(data[i:i + 16])
                    time.sleep(0.01)
            else:
                s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before everything was sent: the answer is what counts
        status, headers, body = read_response(s, t0 + wait)
    return status, headers, body, time.time() - t0


# ---- the stored data that no bad request may touch ---------------------------------------------

def tree(path):
    out = []
    for root, _, files in os.walk(path):
        for f in sorted(files):
            p = os.path.join(root, f)
            if f.endswith(("-wal", "-shm")) or f.endswith(".db"):
                continue  # the job store is compared by its rows
            with open(p, "rb") as fh:
                out.append((os.path.relpath(p, path), hashlib.sha256(fh.read()).hexdigest()))
    return sorted(out)


def store_rows(db):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        tables = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {t: con.execute(f'SELECT * FROM "{t}" ORDER BY rowid').fetchall() for t in tables}
    finally:
        con.close()


# ---- fixtures ------------------------------------------------------------------------------------

def shipped_registry(tmp):
    """A registry directory under tmp holding copies of the shipped prefixes."""
    reg = tmp / "registry"
    reg.mkdir()
    src = os.path.join(HERE, "..", "data", "prefixes")
    for f in os.listdir(src):
        with open(os.path.join(src, f), "rb") as a, open(reg / f, "wb") as b:
            b.write(a.read())
    return reg


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("badreq")
    reg = shipped_registry(tmp)
    srv = Server(tmp, str(reg), config=CONFIG, keys=[ADMIN])
    body, ctype = multipart([("purpose", "fine-tune")],
                            [("file", "t.jsonl", b'{"prompt": "a", "completion": " b"}\n' * 4,
                              "application/octet-stream")])
    r = srv.request("POST", "/v1/files", body, {"Content-Type": ctype})
    assert r.status == 200, r.body
    env = {"srv": srv, "reg": str(reg), "data": os.path.join(str(tmp), "data"),
           "file": r.json()["id"]}
    yield env
    srv.stop()


def snapshot(env):
    return (tree(env["reg"]), tree(env["data"]),
            store_rows(os.path.join(env["data"], "prefixd.db")))


def fill(text, env):
    auth = f"Authorization: Bearer {ADMIN}"
    subs = {
        "{TASK}": "dragon", "{FILE}": env["file"], "{JOB}": "ftjob-0123456789abcdef01234567",
        "{KEY}": ADMIN, "{USER_KEY}": USER, "{KEY_PREFIX}": ADMIN[:-1],
        "{AUTH}": auth + "\r\n", "{AUTH_LF}": auth + "\n", "{AUTH_NUL}": auth + "\0junk\r\n",
        "{LONGQ}": "a" * 9000, "{BIGHDR}": "b" * 17000,
        "{MANYHDR}": "".join(f"X-H{i}: {'v' * 40}\r\n" for i in range(400)),
        "{BIGCHUNKS}": ("400\r\n" + "a" * 1024 + "\r\n") * 6,
    }
    for k, v in subs.items():
        text = text.replace(k, v)
    return text


def body_of(kind, env):
    """(bytes, content type) of a valid body of the given kind."""
    if kind == "completion":
        return json.dumps({"model": "stories260K", "prompt": "Once", "max_tokens": 2}).encode(), \
            "application/json"
    if kind == "chat":
        return json.dumps({"model": "stories260K", "max_tokens": 2,
                           "messages": [{"role": "user", "content": "Hi"}]}).encode(), \
            "application/json"
    if kind == "tokenize":
        return json.dumps({"content": "Once upon a time"}).encode(), "application/json"
    if kind == "detokenize":
        return json.dumps({"tokens": [1, 403, 407]}).encode(), "application/json"
    if kind == "from_prompt":
        return json.dumps({"from_prompt": "Once upon a time"}).encode(), "application/json"
    if kind == "job":
        return json.dumps({"model": "stories260K", "training_file": env["file"]}).encode(), \
            "application/json"
    if kind == "upload":
        return multipart([("purpose", "fine-tune")],
                         [("file", "x.jsonl", b'{"prompt": "a", "completion": " b"}\n',
                           "application/octet-stream")])
    return None, None


def build(method, path, env, headers=(), key=ADMIN, body=None, ctype=None, auth_suffix=""):
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if key:
        lines.append(f"Authorization: Bearer {key}{auth_suffix}")
    lines += list(headers)
    if body is not None:
        if ctype:
            lines.append(f"Content-Type: {ctype}")
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def load():
    with open(CASES) as f:
        doc = json.load(f)
    cases = []
    for method, path, param, kind in doc["matrix"]["routes"]:
        for inj in doc["matrix"]["injections"]:
            cases.append({"name": f"{method} {path} {inj['name']}", "route": [method, path, param, kind],
                          "inj": inj, "status": 400, "param": inj["param"],
                          "code": "invalid_characters"})
    cases += doc["cases"]
    return cases


ALL = load()


def request_bytes(case, env):
    if "route" in case:
        method, path, param, kind = case["route"]
        inj = case["inj"]
        suffix = inj.get("path_suffix", "")
        if param:
            path = path.replace("{P}", fill(param, env) + suffix)
        else:
            path += suffix
        path += inj.get("query", "")
        body, ctype = body_of(kind, env)
        hdrs = [inj["header"]] if "header" in inj else []
        return build(method, path, env, hdrs, body=body, ctype=ctype,
                     auth_suffix=inj.get("auth_suffix", ""))
    if "raw" in case:
        return fill(case["raw"], env).encode("latin-1")
    body = case.get("body")
    hdrs = dict(case.get("headers", {}))
    ctype = hdrs.pop("Content-Type", None)
    if body is not None:
        if isinstance(body, str):
            body = fill(body, env).encode("latin-1")
        else:
            body = fill(json.dumps(body), env).encode()
            ctype = ctype or "application/json"
    key = fill(case.get("key", ADMIN), env)
    return build(case["method"], fill(case["path"], env), env,
                 [f"{k}: {v}" for k, v in hdrs.items()], key=key, body=body, ctype=ctype)


def test_suite_size():
    assert len(ALL) >= 150, len(ALL)
    routes = {(m, p) for m, p, _, _ in json.load(open(CASES))["matrix"]["routes"]}
    assert len(routes) >= 23  # every route of the server


@pytest.mark.parametrize("case", ALL, ids=[c["name"] for c in ALL])
def test_bad_request(env, case):
    before = snapshot(env)
    data = request_bytes(case, env)
    wait = TIMEOUT_S + 4 if case.get("stall") else 5
    status, headers, body, secs = send_raw(env["srv"].port, data, wait=wait,
                                           dribble=case.get("dribble", False))
    want = case["status"]
    if isinstance(want, list):
        assert status in want, (status, body[:300])
    elif want is not None:
        assert status == want, (status, body[:300])
    else:
        assert status in (400, 404), (status, body[:300])
    if case.get("max_seconds"):
        assert secs < case["max_seconds"], secs  # refused at once, not waited on
    if status == 408:
        assert secs >= TIMEOUT_S * 0.9, secs  # the deadline, not earlier
    if status is not None and status >= 400 and not (case.get("html_ok") and
                                                     "json" not in headers.get("content-type", "")):
        assert headers.get("content-type", "").startswith("application/json"), (headers, body)
        err = json.loads(body)["error"]
        assert set(err) == {"message", "type", "param", "code"}, err
        assert isinstance(err["message"], str) and err["message"], err
        if "param" in case and case["param"] is not None:
            assert err["param"] == case["param"], err
        if case.get("code"):
            assert err["code"] == case["code"], err
    # the server is still there, and nothing stored changed
    r = env["srv"].request("GET", "/health")
    assert r.status == 200, r.body
    assert snapshot(env) == before


# ---- per-client connection cap ---------------------------------------------------------------

def test_idle_hog_does_not_block_other_clients(tmp_path):
    reg = tmp_path / "registry"
    reg.mkdir()
    cfg = {"max_connections": 16, "max_connections_per_client": 4, "request_timeout_s": 30,
           "connection_timeout_s": 60}
    with Server(tmp_path, str(reg), config=cfg) as srv:
        hog = []
        for _ in range(12):  # three times the cap, from 127.0.0.1, idle
            s = socket.socket()
            s.connect(("127.0.0.1", srv.port))
            hog.append(s)
        time.sleep(0.2)
        # the hog itself is capped: its extra connections are closed at once
        closed = 0
        for s in hog:
            s.settimeout(0.2)
            try:
                closed += s.recv(1) == b""
            except ConnectionResetError:
                closed += 1
            except socket.timeout:
                pass  # held open: one of the 4 the cap allows
        # (the start-up check's /health connection may still count for a moment)
        assert closed >= 12 - 4, closed
        # another client (source 127.0.0.2) is answered at once
        t0 = time.time()
        body = json.dumps({"model": "stories260K", "prompt": "Once upon a time",
                           "max_tokens": 8, "temperature": 0}).encode()
        req = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
        status, _, resp, secs = send_raw(srv.port, req, wait=2.0, src="127.0.0.2")
        assert status == 200 and secs < 2.0, (status, secs, resp[:200])
        assert json.loads(resp)["choices"][0]["text"]
        status, _, _, secs = send_raw(srv.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
                                      wait=2.0, src="127.0.0.2")
        assert status == 200 and secs < 2.0
        for s in hog:
            s.close()


# ---- the deadline on kept-alive connections -----------------------------------------------------

def test_idle_keepalive_closed_silently_and_stalled_second_request_408(env):
    port = env["srv"].port
    req = f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\r\n".encode()
    # an idle kept-alive connection is closed after the deadline without a stray answer
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S + 4) as s:
        s.sendall(req)
        status, _, _ = read_response(s, time.time() + 5)
        assert status == 200
        t0 = time.time()
        assert s.recv(1) == b""  # closed, nothing sent
        assert TIMEOUT_S * 0.9 <= time.time() - t0 < TIMEOUT_S + 3
    # a second request that stalls after its request line is answered 408
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S + 4) as s:
        s.sendall(req)
        status, _, _ = read_response(s, time.time() + 5)
        assert status == 200
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
        t0 = time.time()
        status, _, body = read_response(s, time.time() + TIMEOUT_S + 4)
        assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout"
        assert time.time() - t0 >= TIMEOUT_S * 0.9
    # and a client that keeps its connection busy with requests is never cut
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        t0 = time.time()
        while time.time() - t0 < TIMEOUT_S * 2.5:
            s.sendall(req)
            status, _, _ = read_response(s, time.time() + 5)
            assert status == 200
            time.sleep(TIMEOUT_S / 4)
