"""Three replicas sharing one registry directory behind nginx, configured by
deploy/nginx/prefixd.conf (only ports and temp paths substituted): a prefix
PUT to one replica becomes servable through the balancer on every replica;
requests of one task stick to one replica; stopping a replica mid-load loses
no request the balancer can retry."""
import concurrent.futures
import http.client
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import ROOT
from server_util import Server, free_port, make_registry

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed")


class Balancer:
    def __init__(self, tmp_path, ports):
        self.port = free_port()
        conf = open(os.path.join(ROOT, "deploy/nginx/prefixd.conf")).read()
        for i, p in enumerate(ports):
            conf = conf.replace(f"127.0.0.1:808{i + 1} ", f"127.0.0.1:{p} ")
        conf = conf.replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{self.port};")
        conf = conf.replace("/tmp/prefixd-nginx", os.path.join(str(tmp_path), "nginx"))
        assert conf.count("127.0.0.1:808") == 0, "the shipped config changed shape"
        self.path = os.path.join(str(tmp_path), "nginx.conf")
        with open(self.path, "w") as f:
            f.write(conf)
        self.proc = subprocess.Popen([NGINX, "-c", self.path, "-p", str(tmp_path),
                                      "-g", "daemon off;"], stderr=subprocess.PIPE)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                if self.request("GET", "/health")[0] in (200, 502, 503):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("nginx did not start: " + self.proc.stderr.read().decode())

    def request(self, method, path, body=None, headers=None, timeout=60):
        h = dict(headers or {})
        if body is not None:
            body = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            return r.status, r.getheader("X-Prefixd-Upstream"), r.read()
        finally:
            c.close()

    def stop(self):
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def cluster(tmp_path):
    registry = make_registry(tmp_path / "registry", [("story", "Once upon a time")])
    replicas, lb = [], None
    try:
        for i in range(3):
            d = tmp_path / f"r{i}"
            d.mkdir()
            replicas.append(Server(d, registry, config={"registry_rescan_ms": 500}))
        lb = Balancer(tmp_path, [r.port for r in replicas])
        yield replicas, lb
    finally:
        if lb:
            lb.stop()
        for r in replicas:  # every replica is stopped, even if one fails to
            if r.proc.poll() is None:
                try:
                    r.stop()
                except AssertionError:
                    r.proc.kill()
                    raise


def completion(task, prompt="One day", n=20):
    return {"model": task, "prompt": prompt, "max_tokens": n, "temperature": 0}


def test_prefix_put_on_one_replica_serves_everywhere(cluster):
    replicas, lb = cluster
    r = replicas[0].request("PUT", "/v1/prefixes/frog", {"from_prompt": "The frog sat on a log."})
    assert r.status in (200, 201), r.body
    # every replica sees it through its watcher on the shared directory
    deadline = time.time() + 10
    pending = set(range(3))
    while pending and time.time() < deadline:
        for i in list(pending):
            if replicas[i].request("GET", "/v1/prefixes/frog").status == 200:
                pending.discard(i)
        time.sleep(0.05)
    assert not pending, f"replicas {pending} never saw the new task"
    texts = set()
    for i in range(3):
        out = replicas[i].complete(**completion("frog"))
        texts.add(out["choices"][0]["text"])
    assert len(texts) == 1  # same model, same prefix, greedy: the same answer everywhere
    st, up, body = lb.request("POST", "/v1/completions", completion("frog"),
                              {"X-Prefixd-Task": "frog"})
    assert st == 200 and json.loads(body)["choices"][0]["text"] in texts


def test_task_affinity(cluster):
    replicas, lb = cluster
    ups = {}
    for task in ("story", "t1", "t2", "t3", "t4", "t5"):
        seen = set()
        for _ in range(4):
            st, up, _ = lb.request("GET", "/v1/models", headers={"X-Prefixd-Task": task})
            assert st == 200
            seen.add(up)
        assert len(seen) == 1, f"task {task} went to {seen}"
        ups[task] = seen.pop()
    assert len(set(ups.values())) >= 2, "every task hashed to one replica"


def test_replica_dies_mid_load(cluster):
    replicas, lb = cluster
    st, up, _ = lb.request("GET", "/v1/models", headers={"X-Prefixd-Task": "story"})
    victim = next(r for r in replicas if up.endswith(f":{r.port}"))
    kill_at = time.time() + 1.0
    stop_at = kill_at + 1.5

    def worker(i):
        out = []  # (start, end, status)
        n = 0
        # the window is 1.5 s after the kill, extended (bounded) until this
        # worker has started a request after it: a loaded machine may still
        # be finishing the requests that crossed the kill
        while time.time() < stop_at or (not out or out[-1][0] <= kill_at) and \
                time.time() < kill_at + 60:
            t0 = time.time()
            st, _, body = lb.request("POST", "/v1/completions",
                                     completion("story", "One day", 200 + (i + n) % 50),
                                     {"X-Prefixd-Task": "story"})
            out.append((t0, time.time(), st, body[:200]))
            n += 1
        return out

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futs = [pool.submit(worker, i) for i in range(8)]
        time.sleep(max(0.0, kill_at - time.time()))
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        results = [r for f in futs for r in f.result()]
    failed = [(st, body) for _, _, st, body in results if st != 200]
    assert not failed, failed
    # the kill really hit requests in flight, and requests went on after it
    across = [r for r in results if r[0] < kill_at < r[1]]
    after = [r for r in results if r[0] > kill_at]
    assert across and after, (len(results), len(across), len(after))
    st, up2, _ = lb.request("POST", "/v1/completions", completion("story"),
                            {"X-Prefixd-Task": "story"})
    assert st == 200 and not up2.endswith(f":{victim.port}")
