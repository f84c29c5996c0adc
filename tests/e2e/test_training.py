"""The fine-tuning API end to end: the real `prefixd serve` trains prefixes
from files uploaded over REST (multipart bodies built by hand here, and once
by the official OpenAI Node client) and serves them by name.

Checked: the files API and its errors (a bad JSONL line is refused with its
line number); job requests and their errors; the status flow
validating_files -> queued -> running -> succeeded with `metrics` events; the
trained task in /v1/models, its held-out loss at least 30% below the base
model's on the same data, its greedy completions showing the taught
behaviour (the dragon Spark), completions answered while a job trains;
cancel (running and queued); a job failing validation with the line number;
admin keys; and durability: a SIGTERM and a kill -9 mid-training, after
which the job resumes from its checkpoint (not step 0) and succeeds with no
job, file or event lost.

The training set is tests/data/train/dragon.*.jsonl: story openings whose
completions always bring in a friendly green dragon named Spark, which the
shipped 260K model never writes by itself."""
import json
import os
import shutil
import subprocess
import threading
import time

import pytest

from conftest import ROOT
from server_util import Server

DATA = os.path.join(ROOT, "tests", "data", "train")
BASE = "stories260K"
# A short run that teaches the dragon: 25 steps per epoch at batch size 4.
FAST = {"n_epochs": 3, "learning_rate": 0.2, "num_virtual_tokens": 10}
# Generous deadlines: sanitizer builds train several times slower.
TRAIN_TIMEOUT = float(os.environ.get("PREFIXD_TRAIN_TIMEOUT", "240"))
BOUNDARY = "----prefixdTestBoundary7MA4YWxkTrZu0gW"


# ---- helpers -------------------------------------------------------------------------------

def multipart(fields, files, boundary=BOUNDARY):
    """A multipart/form-data body: fields [(name, value)], files [(name, filename, bytes,
    content type)]. Returns (body, Content-Type)."""
    out = b""
    for name, value in fields:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                f"{value}\r\n").encode()
    for name, filename, data, ctype in files:
        quoted = filename.replace("\\", "\\\\").replace('"', '\\"')  # a quoted-string
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                f"filename=\"{quoted}\"\r\nContent-Type: {ctype}\r\n\r\n").encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def read(name):
    with open(os.path.join(DATA, name), "rb") as f:
        return f.read()


def upload(server, data, filename="train.jsonl", purpose="fine-tune", key=None):
    body, ctype = multipart([("purpose", purpose)],
                            [("file", filename, data, "application/octet-stream")])
    return server.request("POST", "/v1/files", body, {"Content-Type": ctype}, key=key)


def upload_ok(server, name):
    r = upload(server, read(name), filename=name)
    assert r.status == 200, (r.status, r.body)
    f = r.json()
    assert f["object"] == "file" and f["id"].startswith("file-")
    assert f["filename"] == name and f["purpose"] == "fine-tune" and f["status"] == "processed"
    assert f["bytes"] == len(read(name))
    return f["id"]


def create_job(server, training_file, validation_file=None, suffix=None, seed=7, prefix_hp=None,
               key=None, **extra):
    body = {"model": BASE, "training_file": training_file, "seed": seed, **extra}
    if validation_file:
        body["validation_file"] = validation_file
    if suffix:
        body["suffix"] = suffix
    if prefix_hp is not None:
        body["method"] = {"type": "prefix", "prefix": {"hyperparameters": prefix_hp}}
    return server.request("POST", "/v1/fine_tuning/jobs", body, key=key)


def create_ok(server, *args, **kw):
    r = create_job(server, *args, **kw)
    assert r.status == 200, (r.status, r.body)
    job = r.json()
    assert job["object"] == "fine_tuning.job" and job["id"].startswith("ftjob-")
    return job


def get_job(server, job_id):
    r = server.request("GET", f"/v1/fine_tuning/jobs/{job_id}")
    assert r.status == 200, (r.status, r.body)
    return r.json()


def wait_job(server, job_id, until=("succeeded", "failed", "cancelled"), timeout=TRAIN_TIMEOUT,
             seen=None):
    """Polls the job until its status is in until; records every status seen (in order)."""
    deadline = time.time() + timeout
    while True:
        job = get_job(server, job_id)
        if seen is not None and (not seen or seen[-1] != job["status"]):
            seen.append(job["status"])
        if job["status"] in until:
            return job
        assert time.time() < deadline, f"job {job_id} still {job['status']}:\n{server.logs()}"
        time.sleep(0.02)


def events(server, job_id):
    """Every event of the job, oldest first (paged with after/limit)."""
    out, after = [], None
    while True:
        q = f"?limit=7" + (f"&after={after}" if after else "")
        r = server.request("GET", f"/v1/fine_tuning/jobs/{job_id}/events{q}")
        assert r.status == 200, (r.status, r.body)
        page = r.json()
        assert page["object"] == "list"
        out.extend(page["data"])
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    return list(reversed(out))


def metrics_events(evs):
    return [e for e in evs if e["type"] == "metrics" and not (e["data"] or {}).get("final")]


def wait_step(server, job_id, step, timeout=TRAIN_TIMEOUT):
    """Waits until a metrics event of step >= step exists; returns that step."""
    deadline = time.time() + timeout
    while True:
        r = server.request("GET", f"/v1/fine_tuning/jobs/{job_id}/events?limit=5")
        for e in r.json()["data"]:
            if e["type"] == "metrics" and (e["data"] or {}).get("step", 0) >= step:
                return e["data"]["step"]
        assert time.time() < deadline, f"job {job_id} never reached step {step}"
        time.sleep(0.02)


def listing(server, path):
    r = server.request("GET", path)
    assert r.status == 200, (r.status, r.body)
    return r.json()


def greedy(server, model, prompt, n=60):
    return server.complete(model=model, prompt=prompt, max_tokens=n, temperature=0)["choices"][0][
        "text"]


def valid_rows():
    with open(os.path.join(DATA, "dragon.valid.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


# ---- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("training")
    registry = tmp / "registry"
    registry.mkdir()
    cfg = {"max_file_bytes": 262144, "checkpoint_every": 5, "train_metrics_every": 5}
    with Server(tmp, str(registry), config=cfg) as s:
        yield s


@pytest.fixture(scope="module")
def dragon(server):
    """(training file id, validation file id) of the dragon set."""
    return upload_ok(server, "dragon.train.jsonl"), upload_ok(server, "dragon.valid.jsonl")


# ---- files -----------------------------------------------------------------------------------

def test_files_api(server, dragon):
    train, valid = dragon
    got = listing(server, "/v1/files")
    assert got["object"] == "list"
    ids = [f["id"] for f in got["data"]]
    assert train in ids and valid in ids
    one = listing(server, f"/v1/files/{train}")
    assert one["id"] == train and one["filename"] == "dragon.train.jsonl"
    content = server.request("GET", f"/v1/files/{train}/content")
    assert content.status == 200 and content.body == read("dragon.train.jsonl")
    # a file of its own, deleted
    fid = upload_ok(server, "moral.valid.jsonl")
    r = server.request("DELETE", f"/v1/files/{fid}")
    assert r.status == 200 and r.json() == {"id": fid, "object": "file", "deleted": True}
    assert server.request("GET", f"/v1/files/{fid}").status == 404
    assert server.request("DELETE", f"/v1/files/{fid}").status == 404
    assert fid not in [f["id"] for f in listing(server, "/v1/files")["data"]]
    # paging
    page = listing(server, "/v1/files?limit=1")
    assert len(page["data"]) == 1 and page["has_more"] is True
    assert server.request("GET", "/v1/files?limit=0").status == 400
    # a filename with spaces and quotes survives the round trip
    r = upload(server, read("moral.valid.jsonl"), filename='my "moral" set.jsonl')
    assert r.status == 200 and r.json()["filename"] == 'my "moral" set.jsonl'


def test_bad_jsonl_refused_with_line_number(server):
    before = listing(server, "/v1/files")["data"]
    r = upload(server, read("bad.jsonl"), filename="bad.jsonl")
    assert r.status == 400
    err = r.json()["error"]
    assert err["param"] == "file" and err["code"] == "invalid_file"
    assert "line 2:" in err["message"] and "bad.jsonl" in err["message"], err
    # each bad line alone is refused with its own line number
    lines = read("bad.jsonl").split(b"\n")
    good = b'{"prompt": "Once upon a time", "completion": " there was a cat."}\n'
    for n in (3, 4, 5, 6, 7):
        bad = lines[n - 1]
        if not bad.strip():
            continue
        r = upload(server, good * (n - 1) + bad + b"\n" + good)
        assert r.status == 400, (n, r.body)
        assert f"line {n}:" in r.json()["error"]["message"], (n, r.json())
    assert listing(server, "/v1/files")["data"] == before  # nothing stored


def test_upload_errors(server):
    data = read("dragon.valid.jsonl")
    r = upload(server, data, purpose="assistants")
    assert r.status == 400 and r.json()["error"]["param"] == "purpose"
    body, ctype = multipart([], [("file", "x.jsonl", data, "application/jsonl")])
    r = server.request("POST", "/v1/files", body, {"Content-Type": ctype})
    assert r.status == 400 and r.json()["error"]["param"] == "purpose"
    body, ctype = multipart([("purpose", "fine-tune")], [])
    r = server.request("POST", "/v1/files", body, {"Content-Type": ctype})
    assert r.status == 400 and r.json()["error"]["param"] == "file"
    r = server.request("POST", "/v1/files", data, {"Content-Type": "application/jsonl"})
    assert r.status == 400 and "multipart" in r.json()["error"]["message"]
    body, ctype = multipart([("purpose", "fine-tune")], [("file", "x.jsonl", data, "text/plain")])
    r = server.request("POST", "/v1/files", body[:-10], {"Content-Type": ctype})  # truncated
    assert r.status == 400 and r.json()["error"]["code"] == "invalid_multipart"
    r = server.request("POST", "/v1/files", body.replace(b"\r\n", b"\n"), {"Content-Type": ctype})
    assert r.status == 400
    # over max_file_bytes (256 KiB here): 413, before the body is read
    big = data * (300000 // len(data) + 1)
    r = upload(server, big)
    assert r.status == 413 and r.json()["error"]["code"] == "request_too_large"
    r = upload(server, b"")
    assert r.status == 400 and "no usable examples" in r.json()["error"]["message"]


# ---- job requests ------------------------------------------------------------------------------

def test_job_request_errors(server, dragon):
    train, valid = dragon

    def bad(status, param, **body):
        r = server.request("POST", "/v1/fine_tuning/jobs", body)
        assert r.status == status, (body, r.status, r.body)
        assert r.json()["error"]["param"] == param, (body, r.json())

    bad(400, "training_file", model=BASE)
    bad(400, "training_file", training_file="file-000000000000000000000000")
    bad(400, "validation_file", training_file=train, validation_file="file-nope")
    bad(400, "model", training_file=train, model="gpt-4o-mini")
    bad(400, "suffix", training_file=train, suffix="no spaces please")
    bad(400, "suffix", training_file=train, suffix=BASE)
    bad(400, "seed", training_file=train, seed=-1)
    bad(400, "n_epochs", training_file=train, hyperparameters={"n_epochs": 0})
    bad(400, "hyperparameters", training_file=train, hyperparameters={"epochs": 3})
    bad(400, "method", training_file=train, method={"type": "dpo"})
    # distill is a method now: without its teacher prompt, that is what is missing
    bad(400, "teacher_prompt", training_file=train, method={"type": "distill"})
    bad(400, "method", training_file=train,
        method={"type": "supervised", "prefix": {"hyperparameters": {}}})
    bad(400, "num_virtual_tokens", training_file=train,
        method={"type": "prefix", "prefix": {"hyperparameters": {"num_virtual_tokens": 0}}})
    bad(400, "init_text", training_file=train,
        method={"type": "prefix", "prefix": {"hyperparameters": {
            "init_text": "Once", "prefix_projection": True}}})
    bad(400, "hyperparameters", training_file=train, hyperparameters={"n_epochs": 2},
        method={"type": "prefix", "prefix": {"hyperparameters": {"n_epochs": 3}}})
    bad(400, "temperature", training_file=train, temperature=1)
    r = server.request("POST", "/v1/fine_tuning/jobs", "not json",
                       {"Content-Type": "application/json"})
    assert r.status == 400
    assert server.request("GET", "/v1/fine_tuning/jobs/ftjob-nope").status == 404
    assert server.request("GET", "/v1/fine_tuning/jobs/ftjob-nope/events").status == 404
    assert server.request("POST", "/v1/fine_tuning/jobs/ftjob-nope/cancel").status == 404
    assert server.request("GET", "/v1/fine_tuning/jobs?limit=100001").status == 400
    # a file a job still needs cannot be deleted
    job = create_ok(server, train, prefix_hp={"n_epochs": 100})
    r = server.request("DELETE", f"/v1/files/{train}")
    assert r.status == 409, r.body
    assert server.request("POST", f"/v1/fine_tuning/jobs/{job['id']}/cancel").status == 200
    assert wait_job(server, job["id"])["status"] == "cancelled"


# ---- training ----------------------------------------------------------------------------------

def test_train_serve_and_answer_meanwhile(server, dragon):
    train, valid = dragon
    before = {m["id"] for m in listing(server, "/v1/models")["data"]}
    assert "dragon" not in before
    job = create_ok(server, train, valid, suffix="dragon", prefix_hp=FAST)
    assert job["status"] == "validating_files"
    assert job["model"] == BASE and job["user_provided_suffix"] == "dragon"
    assert job["fine_tuned_model"] is None and job["seed"] == 7
    hp = job["method"]["prefix"]["hyperparameters"]
    assert hp["num_virtual_tokens"] == 10 and hp["n_epochs"] == 3 and hp["batch_size"] == 4
    assert hp["learning_rate"] == pytest.approx(0.2)

    # the server answers completions while the job trains
    seen = []
    assert wait_job(server, job["id"], until=("running", "succeeded", "failed"),
                    seen=seen)["status"] == "running", seen
    latencies = []
    for _ in range(3):
        t0 = time.time()
        got = server.complete(model=BASE, prompt="Once upon a time", max_tokens=32, temperature=0)
        latencies.append(time.time() - t0)
        assert got["usage"]["completion_tokens"] == 32
    assert get_job(server, job["id"])["status"] == "running", "the job ended too soon to tell"
    assert max(latencies) < 5, latencies
    mx = server.metrics()
    assert mx["prefixd_training_active"] == 1

    done = wait_job(server, job["id"], seen=seen)
    assert done["status"] == "succeeded", done
    # queued may pass between two polls; the order is what matters
    assert seen[0] in ("validating_files", "queued", "running") and seen[-1] == "succeeded", seen
    order = ["validating_files", "queued", "running", "succeeded"]
    assert [order.index(s) for s in seen] == sorted(order.index(s) for s in seen), seen
    assert done["fine_tuned_model"] == "dragon" and done["finished_at"] >= done["created_at"]
    assert done["trained_tokens"] > 0 and done["error"] is None

    evs = events(server, job["id"])
    msgs = [e["message"] for e in evs]
    assert any("Files validated" in m for m in msgs), msgs
    assert any("New fine-tuned model created: dragon" in m for m in msgs), msgs
    steps = metrics_events(evs)
    assert len(steps) >= 5
    assert steps[0]["data"]["step"] == 1 and steps[-1]["data"]["step"] == 75
    assert all(s["data"]["resumed_from"] == -1 for s in steps)
    for s in steps:
        d = s["data"]
        assert d["total_steps"] == 75 and d["train_loss"] > 0 and d["trained_tokens"] > 0
    assert any(s["data"]["valid_loss"] is not None for s in steps)
    assert steps[-1]["data"]["trained_tokens"] == done["trained_tokens"]
    final = [e for e in evs if e["type"] == "metrics" and (e["data"] or {}).get("final")]
    assert len(final) == 1
    f = final[0]["data"]
    # held-out loss at least 30% below the base model's on the same data
    assert f["valid_loss"] <= 0.7 * f["base_valid_loss"], f

    # servable by name at once
    assert "dragon" in {m["id"] for m in listing(server, "/v1/models")["data"]}
    prefix = listing(server, "/v1/prefixes/dragon")
    assert prefix["source"] == "trained" and prefix["num_virtual_tokens"] == 10
    # greedy completions of held-out openings bring in the dragon; the base model never does
    rows = valid_rows()
    task = [greedy(server, "dragon", r["prompt"]) for r in rows]
    base = [greedy(server, BASE, r["prompt"]) for r in rows]
    assert sum("Spark" in t for t in task) >= len(rows) // 4, task
    assert not any("Spark" in t for t in base), base
    # the checkpoint is gone once the job is done
    ckpt = os.path.join(os.path.dirname(server.config_path), "data", "checkpoints",
                        f"{job['id']}.ckpt")
    assert not os.path.exists(ckpt)
    mx = server.metrics()
    assert mx['prefixd_fine_tuning_jobs_total{status="succeeded"}'] >= 1
    assert mx["prefixd_training_steps_total"] >= 75


def test_cancel_running_and_queued(server, dragon):
    train, valid = dragon
    long_hp = dict(FAST, n_epochs=200)
    running = create_ok(server, train, valid, suffix="never", prefix_hp=long_hp)
    wait_step(server, running["id"], 3)
    queued = create_ok(server, train, prefix_hp=long_hp)
    wait_job(server, queued["id"], until=("queued",), timeout=30)
    r = server.request("POST", f"/v1/fine_tuning/jobs/{queued['id']}/cancel")
    assert r.status == 200 and r.json()["status"] == "cancelled"
    r = server.request("POST", f"/v1/fine_tuning/jobs/{running['id']}/cancel")
    assert r.status == 200 and r.json()["status"] == "cancelled", r.body
    assert get_job(server, running["id"])["status"] == "cancelled"
    assert server.request("POST", f"/v1/fine_tuning/jobs/{running['id']}/cancel").status == 409
    assert any(e["message"] == "Fine-tuning job cancelled" for e in events(server, running["id"]))
    assert "never" not in {m["id"] for m in listing(server, "/v1/models")["data"]}
    jobs = listing(server, "/v1/fine_tuning/jobs?limit=2")
    assert [j["id"] for j in jobs["data"]] == [queued["id"], running["id"]]
    assert jobs["has_more"] is True
    nxt = listing(server, f"/v1/fine_tuning/jobs?limit=1&after={running['id']}")
    assert nxt["data"] and nxt["data"][0]["id"] not in (queued["id"], running["id"])


def test_validation_fails_with_line_number(server, dragon):
    """Every line fits the context at upload; with 500 virtual tokens none does."""
    train, _ = dragon
    job = create_ok(server, train, prefix_hp={"num_virtual_tokens": 500})
    done = wait_job(server, job["id"], timeout=60)
    assert done["status"] == "failed"
    err = done["error"]
    assert err["code"] == "invalid_training_file" and err["param"] == "training_file"
    assert f"{train} line 1:" in err["message"], err
    assert any(e["level"] == "error" for e in events(server, job["id"]))


def test_openai_node_client(server):
    node = shutil.which("node")
    e2e = os.path.dirname(os.path.abspath(__file__))
    if not node or not os.path.isdir(os.path.join(e2e, "node_modules", "openai")):
        pytest.skip("node or the openai package is not installed (make deps)")
    env = dict(os.environ, PREFIXD_URL=server.url,
               TRAIN_PATH=os.path.join(DATA, "dragon.valid.jsonl"),
               BAD_PATH=os.path.join(DATA, "bad.jsonl"))
    p = subprocess.run([node, os.path.join(e2e, "openai_finetune.mjs")], capture_output=True,
                       text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["file"]["filename"] == "dragon.valid.jsonl" and out["file"]["status"] == "processed"
    assert out["retrieved"]["id"] == out["file"]["id"] and out["file"]["id"] in out["files"]
    assert out["bad"]["status"] == 400 and "line 2:" in out["bad"]["message"]
    assert out["job"]["suffix"] == "node-task" and out["job"]["method"]["type"] == "prefix"
    assert out["cancelled"] == "cancelled" and out["again"] == "cancelled"
    assert "Fine-tuning job cancelled" in out["events"], out["events"]
    all_jobs = [j["id"] for j in listing(server, "/v1/fine_tuning/jobs?limit=10000")["data"]]
    assert out["jobs"] == all_jobs  # the SDK followed `after` one job at a time
    assert out["deleted"]["deleted"] is True


# ---- auth --------------------------------------------------------------------------------------

def test_admin_key_required(tmp_path):
    registry = tmp_path / "registry"
    registry.mkdir()
    with Server(tmp_path, str(registry), "--api-key", "user-1", "--api-key", "admin:root-1",
                keys=["root-1"]) as s:
        data = read("dragon.valid.jsonl")
        assert upload(s, data, key="user-1").status == 403
        assert s.request("GET", "/v1/files", key="user-1").status == 403
        assert s.request("GET", "/v1/fine_tuning/jobs", key="user-1").status == 403
        assert s.request("POST", "/v1/fine_tuning/jobs", {}, key="user-1").status == 403
        assert s.request("GET", "/v1/files", key="nope").status == 401
        r = upload(s, data, key="root-1")
        assert r.status == 200
        assert s.request("GET", "/v1/fine_tuning/jobs", key="root-1").status == 200


# ---- durability ----------------------------------------------------------------------------------

def snapshot(server, job_id):
    files = sorted(f["id"] for f in listing(server, "/v1/files")["data"])
    jobs = sorted(j["id"] for j in listing(server, "/v1/fine_tuning/jobs?limit=10000")["data"])
    evs = [(e["id"], e["message"]) for e in events(server, job_id)]
    return files, jobs, evs


def resumed_at(evs):
    prefix = "Resumed from the checkpoint at step "
    return [int(e["message"][len(prefix):].split()[0]) for e in evs
            if e["message"].startswith(prefix)]


def wait_resumed(server, job_id, count, timeout=60):
    """Waits until the job's events tell count resumptions; returns the events."""
    deadline = time.time() + timeout
    while True:
        evs = events(server, job_id)
        if len(resumed_at(evs)) >= count:
            return evs
        assert time.time() < deadline, [e["message"] for e in evs]
        time.sleep(0.05)


def test_shutdown_and_kill9_resume_from_checkpoint(tmp_path):
    registry = tmp_path / "registry"
    registry.mkdir()
    cfg = {"checkpoint_every": 4, "train_metrics_every": 1}
    s = Server(tmp_path, str(registry), config=cfg)
    try:
        train, valid = upload_ok(s, "dragon.train.jsonl"), upload_ok(s, "dragon.valid.jsonl")
        other = create_ok(s, train, prefix_hp={"n_epochs": 1})  # a second job, queued behind
        s.request("POST", f"/v1/fine_tuning/jobs/{other['id']}/cancel")
        job = create_ok(s, train, valid, suffix="phoenix", prefix_hp=dict(FAST, n_epochs=2))
        jid = job["id"]
        ckpt = os.path.join(str(tmp_path), "data", "checkpoints", f"{jid}.ckpt")

        # 1. SIGTERM mid-training: a clean exit, the job stays running
        wait_step(s, jid, 10)
        s.stop()
        s = Server(tmp_path, str(registry), config=cfg)
        evs = wait_resumed(s, jid, 1)
        assert any("paused by a server shutdown" in e["message"] for e in evs)
        k1 = resumed_at(evs)
        assert len(k1) == 1 and k1[0] >= 8, [e["message"] for e in evs]

        # 2. kill -9 mid-training, after a checkpoint
        wait_step(s, jid, k1[0] + 10)
        assert os.path.exists(ckpt)
        before = snapshot(s, jid)
        assert get_job(s, jid)["status"] == "running"
        s.proc.kill()
        s.proc.wait()
        s.log.close()
        s = Server(tmp_path, str(registry), config=cfg)
        done = wait_job(s, jid)
        assert done["status"] == "succeeded", done
        assert done["fine_tuned_model"] == "phoenix"

        after = snapshot(s, jid)
        # the only new file is the finished job's metrics CSV
        assert len(done["result_files"]) == 1
        assert after[0] == sorted(before[0] + done["result_files"]), "files lost or added"
        assert after[1] == before[1], "jobs lost or added"
        assert set(before[2]) <= set(after[2]), "events lost"
        evs = events(s, jid)
        ks = resumed_at(evs)
        assert len(ks) == 2 and ks[1] > k1[0] and ks[1] % 4 == 0, ks
        # after the second resumption every step continues from its checkpoint, not from 0
        last = max(i for i, e in enumerate(evs) if e["message"].startswith("Resumed from"))
        tail = metrics_events(evs[last:])
        assert tail and tail[0]["data"]["step"] == ks[1] + 1, tail[:1]
        assert all(d["data"]["resumed_from"] == ks[1] for d in tail)
        assert tail[-1]["data"]["step"] == 50
        assert not os.path.exists(ckpt)
        assert "phoenix" in {m["id"] for m in listing(s, "/v1/models")["data"]}
        assert get_job(s, other["id"])["status"] == "cancelled"
        text = greedy(s, "phoenix", "Once upon a time, there was a little girl named Sue.")
        assert isinstance(text, str) and text
    finally:
        if s.proc.poll() is None:
            s.stop()
