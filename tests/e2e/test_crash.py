"""Crash safety: `kill -9` of the real `prefixd serve` at random (seeded)
moments, then a restart on the same registry and data directories.

  - during a prefix upload (PUT /v1/prefixes/{task} of a ~0.5 MB prefix file,
    sent slowly over a raw socket; killed while the body is in flight or just
    after it is complete): no half file is visible in the registry, the old
    version still serves, temp files ('.'-names) are ignored, and a writer's
    temp file untouched for an hour is removed;
  - during registry writes (threads PUTting files and prompts and DELETEing,
    killed at random moments, several rounds): every visible
    <task>.safetensors is a complete valid prefix (`prefixd prefix inspect`
    and a safetensors check here), the restarted server lists exactly those,
    answers a completion for each, and every acknowledged write with nothing
    after it in flight survived;
  - during job submission (POST /v1/files + POST /v1/fine_tuning/jobs from
    threads): every acknowledged file and job is there after the restart,
    with its contents; no row without its file, no contents without a row;
  - during checkpoints (checkpoint_every 1, killed several times): the
    checkpoint on disk is always a complete file (some kills land while the
    next one is being written), a restart removes the temp file of an
    interrupted save, the job resumes from a checkpoint of step N > 0 each
    time and finally succeeds.

Kill moments come from random.Random(SEED) (PREFIXD_CRASH_SEED overrides),
so a failure can be replayed."""
import http.client
import json
import os
import random
import socket
import struct
import threading
import time

from conftest import MODEL, ROOT, TOKENIZER, run
from server_util import Server, make_registry

SEED = int(os.environ.get("PREFIXD_CRASH_SEED", "20240607"))
DATA = os.path.join(ROOT, "tests", "data", "train")
BASE = "stories260K"
TRAIN_TIMEOUT = float(os.environ.get("PREFIXD_TRAIN_TIMEOUT", "240"))
BOUNDARY = "----prefixdCrashBoundary9f2c"
STORY = ("Once upon a time there was a little girl named Lily who liked to play in the park "
         "with her dog. ")


# ---- helpers ------------------------------------------------------------------------------

def kill9(server):
    """SIGKILL, reaped; the log is closed. Returns the pid."""
    server.proc.kill()
    server.proc.wait()
    server.log.close()
    return server.proc.pid


def restart(tmp_path, registry, config):
    return Server(tmp_path, str(registry), config=config)


def safetensors_complete(path):
    """Whether path is a whole safetensors file: header length, JSON header, and
    tensor data that ends exactly at the end of the file. Returns (ok, why)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        return False, f"{len(data)} bytes"
    n = struct.unpack("<Q", data[:8])[0]
    if 8 + n > len(data):
        return False, f"header of {n} bytes past the end ({len(data)} bytes)"
    try:
        header = json.loads(data[8:8 + n])
    except ValueError as e:
        return False, f"header is not JSON: {e}"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    if not ends or 8 + n + max(ends) != len(data):
        return False, f"data ends at {8 + n + max(ends or [0])}, file has {len(data)} bytes"
    return True, header.get("__metadata__", {})


def inspect_ok(path):
    p = run("prefix", "inspect", path, "--model", MODEL, "--tokenizer", TOKENIZER, check=False)
    return p.returncode == 0 and "valid: yes" in p.stdout, p.stdout + p.stderr


def visible_tasks(registry):
    """Task names of the registry's visible files (temp files start with '.')."""
    names = [n for n in os.listdir(registry) if not n.startswith(".")]
    assert all(n.endswith(".safetensors") for n in names), names
    return sorted(n[:-len(".safetensors")] for n in names)


def check_registry(server, registry):
    """Every visible file is complete and valid, the server lists exactly those (no
    temp file), and answers a completion with each. Returns {task: P}."""
    tasks = visible_tasks(registry)
    for t in tasks:
        path = os.path.join(registry, t + ".safetensors")
        ok, why = safetensors_complete(path)
        assert ok, f"{path}: half a file: {why}"
        ok, out = inspect_ok(path)
        assert ok, f"{path}: not a valid prefix:\n{out}"
    r = server.request("GET", "/v1/prefixes")
    assert r.status == 200, r.body
    listed = {e["task"]: e["num_virtual_tokens"] for e in r.json()["data"]}
    assert sorted(listed) == tasks, (sorted(listed), tasks, os.listdir(registry))
    for t in tasks:
        c = server.request("POST", "/v1/completions",
                           {"model": t, "prompt": "One day", "max_tokens": 4, "temperature": 0})
        assert c.status == 200, (t, c.status, c.body)
    return listed


def prefix_file(tmp_path, name, text):
    """A prompt-built prefix file (bytes) and its number of virtual tokens."""
    d = tmp_path / f"src-{name}"
    make_registry(d, [(name, text)])
    data = (d / f"{name}.safetensors").read_bytes()
    ok, meta = safetensors_complete(str(d / f"{name}.safetensors"))
    assert ok, meta
    return data, int(meta["num_virtual_tokens"])


def slow_put(port, task, data, chunk, delay, kill_at, on_kill):
    """PUTs data as a prefix file over a raw socket, chunk bytes every delay seconds;
    calls on_kill() once kill_at bytes of the body are sent (kill_at == len(data):
    right after the last byte). Returns the number of body bytes sent before the kill."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    sent = 0
    try:
        s.sendall((f"PUT /v1/prefixes/{task} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   f"Content-Type: application/octet-stream\r\n"
                   f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode())
        while sent < kill_at:
            n = min(chunk, kill_at - sent)
            s.sendall(data[sent:sent + n])
            sent += n
            time.sleep(delay)
        on_kill()
    except OSError:
        on_kill()
    finally:
        s.close()
    return sent


def multipart(fields, files):
    out = b""
    for name, value in fields:
        out += (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                f"{value}\r\n").encode()
    for name, filename, data in files:
        out += (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                ).encode() + data + b"\r\n"
    out += f"--{BOUNDARY}--\r\n".encode()
    return out, f"multipart/form-data; boundary={BOUNDARY}"


def request(port, method, path, body=None, headers=None, timeout=30):
    """One request on its own connection: (status, parsed JSON or raw bytes). Raises
    OSError / http.client errors when the server dies under it."""
    h = dict(headers or {})
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        raw = r.read()
        try:
            return r.status, json.loads(raw)
        except ValueError:
            return r.status, raw
    finally:
        c.close()


# ---- 1. kill during a prefix upload ----------------------------------------------------------

def test_kill_during_prefix_upload(tmp_path):
    rng = random.Random(SEED + 1)
    registry = tmp_path / "registry"
    registry.mkdir()
    cfg = {"max_body_bytes": 4 << 20}
    old, p_old = prefix_file(tmp_path, "big", STORY * 14)   # ~420 virtual tokens, ~0.5 MB
    new, p_new = prefix_file(tmp_path, "big", STORY * 10)
    assert p_old != p_new and len(old) > 400_000
    # temp files the registry must ignore: a writer's temp name, a dot-name ending in
    # .safetensors (not a task name) and an empty one; a writer's temp file untouched for
    # an hour (its writer died) is removed
    (registry / ".big.safetensors.tmp.AbC123").write_bytes(new[:len(new) // 2])
    (registry / ".big.safetensors").write_bytes(new[:1000])
    (registry / ".x.safetensors.tmp.000000").write_bytes(b"")
    stale = registry / ".big.safetensors.tmp.zZ9old"
    stale.write_bytes(new[:len(new) // 3])
    os.utime(stale, (time.time() - 3600, time.time() - 3600))

    s = restart(tmp_path, registry, cfg)
    try:
        r = s.request("PUT", "/v1/prefixes/big", old,
                      headers={"Content-Type": "application/octet-stream"})
        assert r.status == 201, r.body
        assert not stale.exists()
        for keep in (".big.safetensors.tmp.AbC123", ".big.safetensors",
                     ".x.safetensors.tmp.000000"):
            assert (registry / keep).exists(), keep  # fresh: maybe another process's write
        current = p_old
        for rnd in range(8):
            # rounds alternate: killed with the body in flight, killed right after its end
            in_flight = rnd % 2 == 0
            body = new if current == p_old else old
            kill_at = (rng.randrange(len(body) // 20, len(body) * 19 // 20) if in_flight
                       else len(body))
            killed = threading.Event()

            def on_kill(server=s, settle=0 if in_flight else rng.uniform(0, 0.03)):
                if not killed.is_set():
                    time.sleep(settle)
                    kill9(server)
                    killed.set()

            slow_put(s.port, "big", body, 16384, rng.uniform(0.001, 0.004), kill_at, on_kill)
            assert killed.is_set()
            s = restart(tmp_path, registry, cfg)
            listed = check_registry(s, str(registry))
            assert set(listed) == {"big"}, listed
            if in_flight:  # the old version still serves
                assert listed["big"] == current, (rnd, kill_at, listed, current)
            else:  # complete body: the old or the new version, nothing else
                assert listed["big"] in (p_old, p_new), listed
                current = listed["big"]
            got = s.request("GET", "/v1/prefixes/big").json()
            assert got["num_virtual_tokens"] == current
        print(f"upload: leftovers {sorted(n for n in os.listdir(registry) if n.startswith('.'))}")
        # the registry still takes a normal upload over the leftovers
        r = s.request("PUT", "/v1/prefixes/big", new if current == p_old else old,
                      headers={"Content-Type": "application/octet-stream"})
        assert r.status == 200, r.body
    finally:
        if s.proc.poll() is None:
            s.stop()


# ---- 2. kill during registry writes -----------------------------------------------------------

def test_kill_during_registry_writes(tmp_path):
    rng = random.Random(SEED + 2)
    registry = tmp_path / "registry"
    registry.mkdir()
    cfg = {"max_body_bytes": 4 << 20}
    files = [prefix_file(tmp_path, "v", STORY * k) for k in (3, 7, 12)]
    prompts = ["The cat sat.", "The sun was hot and the sky was blue.", STORY * 2]
    tasks = [f"t{i}" for i in range(4)]
    # per task: the last acknowledged outcome (P, or None for deleted / never written)
    # and whether an operation was in flight when the server died
    acked = {t: None for t in tasks}
    s = restart(tmp_path, registry, cfg)
    try:
        for rnd in range(6):
            stop = threading.Event()
            inflight = {t: False for t in tasks}
            errors = []

            def writer(task, wrng, port=s.port):
                while not stop.is_set():
                    op = wrng.random()
                    inflight[task] = True
                    try:
                        if op < 0.5:
                            data, p = wrng.choice(files)
                            st, body = request(port, "PUT", f"/v1/prefixes/{task}", data,
                                               {"Content-Type": "application/octet-stream"})
                            ok = st in (200, 201)
                            res = p
                        elif op < 0.8:
                            st, body = request(port, "PUT", f"/v1/prefixes/{task}",
                                               {"from_prompt": wrng.choice(prompts)})
                            ok = st in (200, 201)
                            res = body["num_virtual_tokens"] if ok else None
                        else:
                            st, body = request(port, "DELETE", f"/v1/prefixes/{task}")
                            ok = st == 200
                            res = None
                            if st == 404 and acked[task] is None:
                                ok = True
                        if not ok:
                            errors.append((task, st, body))
                            return
                    except (OSError, http.client.HTTPException):
                        return  # the server died under it: stays in flight
                    acked[task] = res
                    inflight[task] = False
                    time.sleep(wrng.uniform(0, 0.05))  # idle now and then: acks get checked

            threads = [threading.Thread(target=writer, args=(t, random.Random(rng.random())))
                       for t in tasks]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.2, 1.2))
            kill9(s)
            stop.set()
            for t in threads:
                t.join(30)
            assert not errors, errors
            s = restart(tmp_path, registry, cfg)
            listed = check_registry(s, str(registry))
            for t in tasks:
                if inflight[t]:
                    continue  # either outcome is fine, and the file is valid (checked)
                assert listed.get(t) == acked[t], (rnd, t, listed.get(t), acked[t])
            print(f"registry round {rnd}: in flight {sorted(t for t in tasks if inflight[t])}, "
                  f"listed {listed}, temp files "
                  f"{len([n for n in os.listdir(registry) if n.startswith('.')])}")
            acked.update({t: listed.get(t) for t in tasks})
    finally:
        if s.proc.poll() is None:
            s.stop()


# ---- 3. kill during job submission ----------------------------------------------------------

def test_kill_during_job_submission(tmp_path):
    rng = random.Random(SEED + 3)
    registry = tmp_path / "registry"
    registry.mkdir()
    # tiny jobs: the worker trains them in the background meanwhile
    cfg = {"max_jobs": 100000, "checkpoint_every": 1000}
    rows = [json.dumps({"prompt": "Once upon a time", "completion": f" there was a cat {i}."})
            for i in range(4)]
    s = restart(tmp_path, registry, cfg)
    files, jobs = {}, {}  # acknowledged: file id -> bytes, job id -> training file id
    lock = threading.Lock()
    try:
        for rnd in range(4):
            stop = threading.Event()
            errors = []

            def submitter(n, port=s.port):
                i = 0
                while not stop.is_set():
                    data = ("\n".join(rows) + f"\n{{\"text\": \"round {rnd} thread {n} {i}\"}}\n"
                            ).encode()
                    i += 1
                    body, ctype = multipart([("purpose", "fine-tune")],
                                            [("file", "t.jsonl", data)])
                    try:
                        st, f = request(port, "POST", "/v1/files", body, {"Content-Type": ctype})
                        if st != 200:
                            errors.append(("file", st, f))
                            return
                        with lock:
                            files[f["id"]] = data
                        st, j = request(port, "POST", "/v1/fine_tuning/jobs",
                                        {"model": BASE, "training_file": f["id"], "seed": i,
                                         "method": {"type": "prefix", "prefix": {
                                             "hyperparameters": {"n_epochs": 1,
                                                                 "num_virtual_tokens": 2}}}})
                        if st != 200:
                            errors.append(("job", st, j))
                            return
                        with lock:
                            jobs[j["id"]] = f["id"]
                    except (OSError, http.client.HTTPException):
                        return

            threads = [threading.Thread(target=submitter, args=(n,)) for n in range(3)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.3, 1.5))
            kill9(s)
            stop.set()
            for t in threads:
                t.join(30)
            assert not errors, errors
            s = restart(tmp_path, registry, cfg)

            listed_files = set()
            after = None
            while True:
                q = "?limit=10000" + (f"&after={after}" if after else "")
                r = s.request("GET", "/v1/files" + q).json()
                listed_files |= {f["id"] for f in r["data"]}
                if not r.get("has_more"):
                    break
                after = r["data"][-1]["id"]
            lost = set(files) - listed_files
            assert not lost, f"round {rnd}: acknowledged files lost: {sorted(lost)}"
            for fid in listed_files:  # no row without its contents
                c = s.request("GET", f"/v1/files/{fid}/content")
                assert c.status == 200, (fid, c.status, c.body)
                if fid in files:
                    assert c.body == files[fid], fid
            # no contents without a row (the store removes leftovers when it opens)
            fdir = os.path.join(str(tmp_path), "data", "files")
            on_disk = {n[:-len(".jsonl")] for n in os.listdir(fdir) if not n.startswith(".")}
            # (jobs finishing meanwhile add their metrics files: list again after reading)
            listed_now = {f["id"] for f in s.request("GET", "/v1/files?limit=10000").json()["data"]}
            assert listed_files <= on_disk <= listed_now, (on_disk ^ listed_files)
            assert not [n for n in os.listdir(fdir) if n.startswith(".")]

            r = s.request("GET", "/v1/fine_tuning/jobs?limit=10000")
            listed_jobs = {j["id"]: j for j in r.json()["data"]}
            lost = set(jobs) - set(listed_jobs)
            assert not lost, f"round {rnd}: acknowledged jobs lost: {sorted(lost)}"
            for jid, j in listed_jobs.items():
                assert j["training_file"] in listed_files, (jid, j["training_file"])
                if jid in jobs:
                    assert j["training_file"] == jobs[jid]
                got = s.request("GET", f"/v1/fine_tuning/jobs/{jid}")
                assert got.status == 200
        print(f"submission: {len(files)} files and {len(jobs)} jobs acknowledged, none lost")
        assert len(files) >= 4 and len(jobs) >= 4, (len(files), len(jobs))
    finally:
        if s.proc.poll() is None:
            s.stop()


# ---- 4. kill during checkpoints ---------------------------------------------------------------

def job_events(server, jid):
    out, after = [], None
    while True:
        q = "?limit=100" + (f"&after={after}" if after else "")
        page = server.request("GET", f"/v1/fine_tuning/jobs/{jid}/events{q}").json()
        out.extend(page["data"])
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    return list(reversed(out))


RESUMED = "Resumed from the checkpoint at step "


def resumptions(evs):
    return [int(e["message"][len(RESUMED):].split()[0]) for e in evs
            if e["message"].startswith(RESUMED)]


def last_step(server, jid):
    r = server.request("GET", f"/v1/fine_tuning/jobs/{jid}/events?limit=5")
    steps = [e["data"]["step"] for e in r.json()["data"]
             if e["type"] == "metrics" and e["data"] and "step" in e["data"]
             and not e["data"].get("final")]
    return max(steps, default=0)


def wait_until(cond, timeout, what):
    deadline = time.time() + timeout
    while True:
        v = cond()
        if v:
            return v
        assert time.time() < deadline, what
        time.sleep(0.01)


def temp_shows(directory, deadline):
    """Polls directory (no sleep) until a '.'-file shows; whether one did."""
    while time.time() < deadline:
        if any(n.startswith(".") for n in os.listdir(directory)):
            return True
    return False


def test_kill_during_checkpoints(tmp_path):
    rng = random.Random(SEED + 4)
    registry = tmp_path / "registry"
    registry.mkdir()
    cfg = {"checkpoint_every": 1, "train_metrics_every": 1, "train_eval_every": 1000}
    ckdir = os.path.join(str(tmp_path), "data", "checkpoints")
    s = restart(tmp_path, registry, cfg)
    try:
        with open(os.path.join(DATA, "dragon.train.jsonl"), "rb") as f:
            body, ctype = multipart([("purpose", "fine-tune")],
                                    [("file", "dragon.train.jsonl", f.read())])
        r = s.request("POST", "/v1/files", body, {"Content-Type": ctype})
        assert r.status == 200, r.body
        r = s.request("POST", "/v1/fine_tuning/jobs",
                      {"model": BASE, "training_file": r.json()["id"], "suffix": "ckpt", "seed": 3,
                       "method": {"type": "prefix", "prefix": {"hyperparameters": {
                           "n_epochs": 2, "num_virtual_tokens": 8}}}})
        assert r.status == 200, r.body
        jid = r.json()["id"]
        ckpt = os.path.join(ckdir, f"{jid}.ckpt")
        seen = []
        for rnd in range(5):
            base = seen[-1] if seen else 0
            target = base + rng.randint(2, 5)
            wait_until(lambda: last_step(s, jid) >= target - 1, TRAIN_TIMEOUT,
                       f"job {jid} never reached step {target - 1}")
            t0 = time.time()
            wait_until(lambda: last_step(s, jid) >= target, TRAIN_TIMEOUT,
                       f"job {jid} never reached step {target}")
            step_s = time.time() - t0
            if rnd % 2 == 0:
                # anywhere in the next step; its checkpoint is saved at the step's end
                time.sleep(rng.uniform(0.3, 1.2) * step_s)
                in_save = False
            else:  # as soon as the next save's temp file shows: mid-write
                in_save = temp_shows(ckdir, time.time() + 4 * step_s + 2)
            kill9(s)
            # what a restart finds: a whole checkpoint, never half of one
            assert os.path.exists(ckpt), os.listdir(ckdir)
            ok, meta = safetensors_complete(ckpt)
            assert ok, f"half-written checkpoint: {meta}"
            step_on_disk = int(meta["step"])
            assert step_on_disk >= target - 1, (step_on_disk, target)
            temps = [n for n in os.listdir(ckdir) if n.startswith(".")]
            print(f"checkpoint round {rnd}: killed after step {target} (a step took "
                  f"{step_s * 1000:.0f} ms), checkpoint of step {step_on_disk} on disk, "
                  f"temp files {temps}{' (killed mid-save)' if in_save else ''}")
            s = restart(tmp_path, registry, cfg)
            assert not [n for n in os.listdir(ckdir) if n.startswith(".")], os.listdir(ckdir)
            evs = wait_until(lambda: (lambda e: len(resumptions(e)) > rnd and e)(
                job_events(s, jid)), 60, f"job {jid} did not resume")
            got = resumptions(evs)
            assert len(got) == rnd + 1, got
            assert got[-1] > 0 and got[-1] == step_on_disk, (got, step_on_disk)
            assert not seen or got[-1] >= seen[-1], got
            seen.append(got[-1])
        job = wait_until(lambda: (lambda j: j["status"] in ("succeeded", "failed", "cancelled")
                                  and j)(s.request("GET", f"/v1/fine_tuning/jobs/{jid}").json()),
                         TRAIN_TIMEOUT, f"job {jid} did not finish")
        assert job["status"] == "succeeded", job
        assert job["fine_tuned_model"] == "ckpt"
        # removed just after the status is recorded
        wait_until(lambda: not os.path.exists(ckpt), 10, "the checkpoint outlived its job")
        # the metrics after the last resumption continue from its checkpoint
        evs = job_events(s, jid)
        last = max(i for i, e in enumerate(evs) if e["message"].startswith(RESUMED))
        tail = [e for e in evs[last:] if e["type"] == "metrics" and not e["data"].get("final")]
        assert tail and tail[0]["data"]["step"] == seen[-1] + 1, tail[:1]
        check_registry(s, str(registry))
    finally:
        if s.proc.poll() is None:
            s.stop()
