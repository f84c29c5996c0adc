"""The web console (GET /, issue 15) in a real browser: Debian's headless
Chromium driven by puppeteer-core (web_console.mjs, which lists its checks)
against a real `prefixd serve` with an admin key and a user key, on the
shipped trained tasks. Screenshots land in build/test-artefacts/web/.

Also, without a browser: the assets' headers (Content-Type, CSP, ETag
revalidation to 304, HEAD) and the page's independence from any CDN."""
import glob
import os
import re
import shutil
import subprocess

import pytest

from conftest import ROOT
from server_util import Server

E2E = os.path.dirname(os.path.abspath(__file__))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ADMIN, USER = "web-admin-key-7", "web-user-key-3"


@pytest.fixture
def registry(tmp_path):
    reg = tmp_path / "registry"
    reg.mkdir()
    for f in sorted(glob.glob(os.path.join(ROOT, "tests/data/prefixes/*.safetensors"))):
        shutil.copy(f, reg)
    return str(reg)


def keyed(tmp_path, registry):
    return Server(tmp_path, registry, keys=[ADMIN],
                  config={"api_keys": [{"key": ADMIN, "admin": True}, USER],
                          "train_metrics_every": 1, "train_threads": 1})


def test_assets_headers(tmp_path, registry):
    with keyed(tmp_path, registry) as s:
        r = s.request("GET", "/", key="")
        assert r.status == 200
        assert r.header("Content-Type") == "text/html; charset=utf-8"
        csp = r.header("Content-Security-Policy")
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
        assert r.header("X-Content-Type-Options") == "nosniff"
        assert r.header("Cache-Control") == "no-cache"
        html = r.body.decode()
        # every script and style is served by this binary: no CDN, no inline script
        refs = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert refs and all(u.startswith("/web/") or u == "data:," for u in refs), refs
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline script"
        assert "Bearer " not in html
        types = {"app.js": "text/javascript", "console.css": "text/css",
                 "uPlot.iife.min.js": "text/javascript", "uPlot.min.css": "text/css"}
        for name, ctype in types.items():
            a = s.request("GET", f"/web/{name}", key="")
            assert a.status == 200 and a.header("Content-Type").startswith(ctype), (name, a.status)
            assert len(a.body) > 100
            etag = a.header("ETag")
            again = s.request("GET", f"/web/{name}", headers={"If-None-Match": etag}, key="")
            assert again.status == 304 and again.body == b""
            head = s.request("HEAD", f"/web/{name}", key="")
            assert head.status == 200 and head.body == b""
        with open(os.path.join(ROOT, "server/web/app.js"), "rb") as f:
            assert s.request("GET", "/web/app.js", key="").body == f.read()
        missing = s.request("GET", "/web/secret.txt", key="")
        assert missing.status == 404 and missing.json()["error"]["code"] == "unknown_url"
        assert s.request("POST", "/", key="").status == 405


def test_console_in_chromium(tmp_path, registry):
    node = shutil.which("node")
    if not node:
        pytest.skip("node is not installed")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (make deps)")
    if not os.path.isdir(os.path.join(E2E, "node_modules/puppeteer-core")):
        pytest.skip("puppeteer-core is not installed (make deps)")
    out = os.path.join(ROOT, "build/test-artefacts/web")
    os.makedirs(out, exist_ok=True)
    data = os.path.join(ROOT, "tests/data/train")
    files = {}
    for name, n in (("train", 24), ("valid", 8)):
        with open(os.path.join(data, f"dragon.{name}.jsonl")) as f:
            lines = f.readlines()[:n]
        files[name] = str(tmp_path / f"small.{name}.jsonl")
        with open(files[name], "w") as f:
            f.writelines(lines)
    with keyed(tmp_path, registry) as s:
        p = subprocess.run([node, os.path.join(E2E, "web_console.mjs"), s.url, ADMIN, USER,
                            files["train"], files["valid"], out],
                           capture_output=True, text=True, timeout=420, cwd=E2E)
        print(p.stdout)
        assert p.returncode == 0, f"{p.stdout}\n{p.stderr}\n{s.logs()[-3000:]}"
    for shot in ("tasks", "playground", "jobs", "load", "auth"):
        assert os.path.getsize(os.path.join(out, f"web_{shot}.png")) > 1000


def test_prefix_listing_fields(tmp_path, registry):
    """The fields the console's task table shows beyond the file's own:
    base_fingerprint (every task's, all the base model's) and last_used_at
    (null until a request uses the task, then that request's time)."""
    import time
    with keyed(tmp_path, registry) as s:
        before = s.request("GET", "/v1/prefixes").json()["data"]
        fps = {p["base_fingerprint"] for p in before}
        assert len(fps) == 1 and re.fullmatch(r"[0-9a-f]{16}", fps.pop())
        assert all(p["last_used_at"] is None for p in before)
        t0 = int(time.time())
        s.complete(model="dragon", prompt="Once", max_tokens=2, temperature=0)
        after = {p["task"]: p for p in s.request("GET", "/v1/prefixes").json()["data"]}
        assert t0 <= after["dragon"]["last_used_at"] <= int(time.time())
        assert after["dragon"]["requests"] == 1
        assert all(p["last_used_at"] is None for t, p in after.items() if t != "dragon")
        one = s.request("GET", "/v1/prefixes/dragon").json()
        assert one["last_used_at"] == after["dragon"]["last_used_at"]
