"""Helpers for the server end-to-end tests: a free loopback port, a real
`prefixd serve` process (started on it, waited on until /health is 200,
stopped with SIGTERM and required to exit 0), small HTTP and SSE clients on
the standard library, and registries of prompt-built tasks made with
`prefixd prefix from-prompt`."""
import http.client
import json
import os
import signal
import socket
import subprocess
import time

from conftest import BIN, MODEL, TOKENIZER, run

# (task, prefix text). Each prefix is a prompt whose KV cache becomes the task.
TASKS = [
    ("story", "Once upon a time"),
    ("lily", "Lily and Ben were friends."),
    ("sun", "The sun was hot."),
    ("dog", "The dog liked to run."),
    ("cat", "A little cat sat on the mat."),
    ("park", "They went to the park."),
    ("rain", "It was a rainy day."),
    ("toy", "Tim had a red toy car."),
]


def free_port():
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_registry(path, tasks=TASKS):
    """Builds one prompt-built prefix file per (task, text) into path."""
    os.makedirs(path, exist_ok=True)
    for task, text in tasks:
        run("prefix", "from-prompt", "--model", MODEL, "--tokenizer", TOKENIZER, "--task", task,
            "--text", text, "--out", str(path))
    return str(path)


def generate(prompt, max_tokens, *extra):
    """`prefixd generate` greedy text (the reference for the server)."""
    return run("generate", "--model", MODEL, "--tokenizer", TOKENIZER, "--prompt", prompt,
               "--max-tokens", str(max_tokens), "--temperature", "0", *extra).stdout


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


class Server:
    """A running `prefixd serve`. Use as a context manager or call stop()."""

    def __init__(self, tmp_path, registry, *flags, config=None, keys=None, wait=True):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.registry = registry
        self.keys = keys
        cfg = {
            "model": MODEL,
            "tokenizer": TOKENIZER,
            "registry": registry,
            "data": os.path.join(str(tmp_path), "data"),
            "listen": f"127.0.0.1:{self.port}",
            "registry_rescan_ms": 200,
            "shutdown_grace_ms": 5000,
        }
        cfg.update(config or {})
        self.config_path = os.path.join(str(tmp_path), f"prefixd-{self.port}.json")
        with open(self.config_path, "w") as f:
            json.dump(cfg, f)
        self.log_path = os.path.join(str(tmp_path), f"prefixd-{self.port}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([BIN, "serve", "--config", self.config_path, *flags],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prefixd serve exited {self.proc.returncode}:\n{self.logs()}")
            try:
                if self.request("GET", "/health").status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"prefixd serve not ready after {timeout} s:\n{self.logs()}")

    def logs(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self, timeout=30):
        """SIGTERM; the server must exit 0. Returns its log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"prefixd serve ignored SIGTERM:\n{self.logs()}")
        self.log.close()
        assert self.proc.returncode == 0, f"exit {self.proc.returncode}:\n{self.logs()}"
        return self.logs()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # ---- HTTP ----
    def request(self, method, path, body=None, headers=None, key=None, timeout=60):
        h = dict(headers or {})
        if key is None and self.keys:
            key = self.keys[0]
        if key:
            h["Authorization"] = f"Bearer {key}"
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            body = body.encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            return Response(r.status, r.getheaders(), r.read())
        finally:
            conn.close()

    def complete(self, key=None, **params):
        """POST /v1/completions; asserts 200 and returns the JSON."""
        r = self.request("POST", "/v1/completions", params, key=key)
        assert r.status == 200, (r.status, r.body)
        return r.json()

    def stream(self, key=None, **params):
        """POST /v1/completions with stream: true. Returns (response headers, list of raw
        event payloads as strings, in order), checking the SSE framing."""
        params["stream"] = True
        r = self.request("POST", "/v1/completions", params, key=key)
        assert r.status == 200, (r.status, r.body)
        text = r.body.decode()
        assert text.endswith("\n\n"), text[-200:]
        events = text.split("\n\n")[:-1]
        for e in events:
            assert e.startswith("data: "), e
        return r, [e[len("data: "):] for e in events]

    def metrics(self):
        """/metrics as {sample line without value: float value}."""
        r = self.request("GET", "/metrics")
        assert r.status == 200
        out = {}
        for line in r.body.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
        return out
