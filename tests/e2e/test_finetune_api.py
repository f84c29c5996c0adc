"""The parts of the fine-tuning API that clients expect beyond create/cancel,
end to end against the real `prefixd serve` on 127.0.0.1 (issue 12 item 5,
issue 11 item 3):

- a chat fine-tuning job ({"messages"} lines) with method supervised;
- OpenAI's `method: {"type": "supervised", ...}` through the official Node
  client; the job's checkpoints (`fineTuning.jobs.checkpoints.list`: the
  last three epoch ends, each servable as "<suffix>.ckpt-step-N", the older
  ones gone from the registry) and its result file (`files.content`: the
  metrics CSV, one row per step);
- the learning-rate schedules (constant, linear, cosine after a warm-up):
  every step's learning rate, in the events and in the CSV, against the
  formula computed here;
- early stopping: a job whose validation loss stops improving ends early
  and publishes the prefix of its best validation;
- init_from an existing task and from an uploaded prefix file: the first
  step's loss is already the trained prefix's, far below a fresh start's;
- estimated_finish while running, and the training gauges and estimate
  reset when a job is cancelled;
- the PEFT export (GET /v1/prefixes/{task}?format=peft and `prefixd prefix
  export-peft`) read back by `prefixd prefix import-peft` to the same bits.

Jobs are tiny (stories260K, 20 examples, a few dozen steps)."""
import csv
import io
import json
import math
import os
import shutil
import struct
import subprocess
import tarfile
import time

import pytest

from conftest import MODEL, ROOT, TOKENIZER, run
from server_util import Server, make_registry
from test_training import (DATA, TRAIN_TIMEOUT, create_job, events, get_job, listing,
                           read, upload, upload_ok, wait_job)

PREFIXES = os.path.join(ROOT, "tests", "data", "prefixes")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finetune")
    registry = tmp / "registry"
    make_registry(registry, [("story", "Once upon a time")])  # a prompt-built prefix (BOS)
    for task in ("dragon", "moral"):
        shutil.copy(os.path.join(PREFIXES, f"{task}.safetensors"), registry)
    cfg = {"max_file_bytes": 262144, "train_metrics_every": 1, "checkpoint_every": 0}
    with Server(tmp, str(registry), config=cfg) as s:
        yield s


def supervised(**hp):
    return {"type": "supervised", "supervised": {"hyperparameters": hp}}


def job_ok(server, train, valid=None, **kw):
    r = create_job(server, train, valid, **kw)
    assert r.status == 200, (r.status, r.body)
    return r.json()


def metrics_by_step(server, job_id):
    """{step: data} of the job's per-step metrics events."""
    out = {}
    for e in events(server, job_id):
        d = e.get("data") or {}
        if e["type"] == "metrics" and "step" in d and not d.get("final"):
            out[d["step"]] = d
    return out


def final_metrics(server, job_id):
    return [e["data"] for e in events(server, job_id)
            if e["type"] == "metrics" and (e.get("data") or {}).get("final")][-1]


def read_prefix(path):
    """{tensor name: raw bytes} of a safetensors file."""
    with open(path, "rb") as f:
        b = f.read()
    n = struct.unpack("<Q", b[:8])[0]
    head = json.loads(b[8:8 + n])
    data = b[8 + n:]
    return {k: data[v["data_offsets"][0]:v["data_offsets"][1]] for k, v in head.items()
            if k != "__metadata__"}


# ---- the official client: method, checkpoints, result files ---------------------------------

def test_supervised_checkpoints_and_result_file_with_node_client(server, tmp_path):
    node = shutil.which("node")
    e2e = os.path.dirname(os.path.abspath(__file__))
    if not node or not os.path.isdir(os.path.join(e2e, "node_modules", "openai")):
        pytest.skip("node or the openai package is not installed (make deps)")
    valid = tmp_path / "valid.jsonl"
    valid.write_bytes(b"".join(read("dragon.train.jsonl").splitlines(keepends=True)[:8]))
    env = dict(os.environ, PREFIXD_URL=server.url, MODE="api", TRAIN_TIMEOUT=str(TRAIN_TIMEOUT),
               TRAIN_PATH=os.path.join(DATA, "dragon.valid.jsonl"), VALID_PATH=str(valid))
    p = subprocess.run([node, os.path.join(e2e, "openai_finetune.mjs")], capture_output=True,
                       text=True, timeout=TRAIN_TIMEOUT + 60, env=env)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    job = out["job"]
    assert job["status"] == "succeeded", (job, server.logs())
    method = out["created"]["method"]
    assert method["type"] == "supervised"
    hp = method["supervised"]["hyperparameters"]
    # the defaults every interface shares, resolved and shown
    assert hp["num_virtual_tokens"] == 20 and hp["learning_rate"] == pytest.approx(0.1)
    assert hp["learning_rate_multiplier"] == 2 and hp["lr_scheduler_type"] == "linear"
    assert out["created"]["hyperparameters"]["n_epochs"] == 5

    # 20 examples, batch 4, 5 epochs: epochs end at steps 5, 10, 15, 20 and 25 (the last
    # is the result); the last three checkpoints are kept, newest first
    ck = out["checkpoints"]
    assert [c["step_number"] for c in ck] == [20, 15, 10], ck
    for c in ck:
        assert c["object"] == "fine_tuning.job.checkpoint" and c["id"].startswith("ftckpt-")
        assert c["fine_tuning_job_id"] == job["id"]
        assert c["fine_tuned_model_checkpoint"] == f"spark.ckpt-step-{c['step_number']}"
        m = c["metrics"]
        assert m["step"] == c["step_number"]
        assert 0 < m["valid_loss"] < 5 and 0 <= m["valid_mean_token_accuracy"] <= 1
        assert m["full_valid_loss"] == m["valid_loss"]
    models = {m["id"] for m in listing(server, "/v1/models")["data"]}
    assert {"spark", "spark.ckpt-step-10", "spark.ckpt-step-15", "spark.ckpt-step-20"} <= models
    assert "spark.ckpt-step-5" not in models  # pruned with its checkpoint
    r = server.complete(model="spark.ckpt-step-10", prompt="Once upon a time", max_tokens=8,
                        temperature=0)
    assert r["model"] == "spark.ckpt-step-10" and r["choices"][0]["text"]

    # the result file: one CSV row per step, validation at every epoch end
    assert len(job["result_files"]) == 1 and len(out["results"]) == 1
    f = server.request("GET", f"/v1/files/{job['result_files'][0]}").json()
    assert f["purpose"] == "fine-tune-results" and f["filename"] == "step_metrics.csv"
    rows = list(csv.DictReader(io.StringIO(out["results"][0])))
    assert [int(r["step"]) for r in rows] == list(range(1, 26))
    assert list(rows[0]) == ["step", "epoch", "train_loss", "valid_loss", "valid_token_accuracy",
                             "learning_rate", "trained_tokens", "tokens_per_second"]
    evaluated = [int(r["step"]) for r in rows if r["valid_loss"]]
    assert evaluated == [5, 10, 15, 20, 25], evaluated
    for c in ck:
        row = rows[c["step_number"] - 1]
        assert float(row["valid_loss"]) == pytest.approx(c["metrics"]["valid_loss"], rel=1e-5)
        assert float(row["valid_token_accuracy"]) == pytest.approx(
            c["metrics"]["valid_mean_token_accuracy"], rel=1e-5)
    # the prefix learns the dragon: accuracy up, loss down from the first epoch to the last
    first, last = rows[4], rows[24]
    assert float(last["valid_loss"]) < float(first["valid_loss"])
    assert float(last["valid_token_accuracy"]) > float(first["valid_token_accuracy"])
    assert job["estimated_finish"] is None  # finished


# ---- chat data ------------------------------------------------------------------------------

def test_chat_job_supervised(server):
    """OpenAI chat fine-tuning lines ({"messages"}, rendered with the model's chat template;
    ChatML for the shipped model, which has none) with method supervised: the held-out
    assistant-token loss drops by at least 30%."""
    train = upload_ok(server, "dragon_chat.train.jsonl")
    valid = upload_ok(server, "dragon_chat.valid.jsonl")
    job = job_ok(server, train, valid, suffix="dragon-chat", seed=1,
                 method=supervised(n_epochs=5, learning_rate_multiplier=2))
    done = wait_job(server, job["id"])
    assert done["status"] == "succeeded", done
    fin = final_metrics(server, job["id"])
    assert fin["valid_loss"] < 0.7 * fin["base_valid_loss"], fin
    r = server.request("POST", "/v1/chat/completions", {
        "model": "dragon-chat", "max_tokens": 40, "temperature": 0,
        "messages": [{"role": "user", "content": "Continue the story: One day, Tom went to the "
                                                 "park with his mom."}]})
    assert r.status == 200, r.body
    assert r.json()["choices"][0]["message"]["content"]


# ---- schedules ------------------------------------------------------------------------------

def lr_formula(kind, base, total, warmup, step):
    """The learning rate of 0-based step s (prefixd/adamw.h), computed here."""
    if step < warmup:
        return base * (step + 1) / warmup
    if kind == "constant":
        return base
    q = (step - warmup) / (total - warmup)
    return base * (1 - q) if kind == "linear" else base * 0.5 * (1 + math.cos(math.pi * q))


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine"])
def test_schedule_learning_rate_per_step(server, kind):
    train = upload_ok(server, "dragon.valid.jsonl")  # 20 lines; 2 split off for validation
    job = job_ok(server, train, seed=11, method=supervised(
        n_epochs=2, batch_size=4, learning_rate=0.05, learning_rate_multiplier=2,
        lr_scheduler_type=kind, warmup_ratio=0.2, weight_decay=0.01, max_grad_norm=0.5,
        num_virtual_tokens=4))
    hp = job["method"]["supervised"]["hyperparameters"]
    assert hp["lr_scheduler_type"] == kind and hp["warmup_ratio"] == pytest.approx(0.2)
    assert hp["weight_decay"] == pytest.approx(0.01) and hp["max_grad_norm"] == 0.5
    done = wait_job(server, job["id"])
    assert done["status"] == "succeeded", done
    by_step = metrics_by_step(server, job["id"])
    total = 10  # 18 examples -> 5 steps per epoch, 2 epochs
    assert sorted(by_step) == list(range(1, total + 1))
    warmup = int(0.2 * total)
    for s, d in by_step.items():
        assert d["total_steps"] == total
        want = lr_formula(kind, 0.1, total, warmup, s - 1)
        # (events carry 9 significant digits)
        assert d["learning_rate"] == pytest.approx(want, rel=1e-7, abs=1e-15), (s, d)
    text = server.request("GET", f"/v1/files/{done['result_files'][0]}/content").body.decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    for r in rows:
        want = lr_formula(kind, 0.1, total, warmup, int(r["step"]) - 1)
        assert float(r["learning_rate"]) == pytest.approx(want, rel=1e-5, abs=1e-12)


# ---- early stopping -------------------------------------------------------------------------

def test_early_stopping_publishes_the_best(server):
    # trained on the dragon, validated on the morals: the validation loss soon stops falling
    train, valid = upload_ok(server, "dragon.valid.jsonl"), upload_ok(server, "moral.valid.jsonl")
    job = job_ok(server, train, valid, suffix="early", seed=1, method=supervised(
        n_epochs=10, lr_scheduler_type="constant", eval_every=1, early_stopping_patience=2))
    done = wait_job(server, job["id"])
    assert done["status"] == "succeeded", done
    by_step = metrics_by_step(server, job["id"])
    last = max(by_step)
    assert last < 50, "the job did not stop early"
    losses = {s: d["valid_loss"] for s, d in by_step.items() if d["valid_loss"] is not None}
    assert sorted(losses) == list(range(1, last + 1))  # validated every step
    best = min(losses, key=lambda s: (losses[s], s))
    # patience 2: the two validations after the best did not improve on it
    assert last == best + 2
    fin = final_metrics(server, job["id"])
    assert fin["step"] == last and fin["best_step"] == best
    assert fin["valid_loss"] == pytest.approx(losses[best], abs=2e-6)  # the best, not the last
    assert any(e["message"].startswith(f"Stopped early at step {last}")
               for e in events(server, job["id"]))
    assert "early" in {m["id"] for m in listing(server, "/v1/models")["data"]}


# ---- init_from ------------------------------------------------------------------------------

def first_loss(server, job_id):
    return metrics_by_step(server, job_id)[1]["train_loss"]


def test_init_from_task_and_file(server):
    train = upload_ok(server, "dragon.valid.jsonl")
    fresh = job_ok(server, train, seed=2, method=supervised(n_epochs=1, num_virtual_tokens=20))
    # from the shipped dragon task: its 20 slots, and its knowledge from step 1
    from_task = job_ok(server, train, seed=2, suffix="dragon-more",
                       method=supervised(n_epochs=1, init_from="dragon"))
    assert from_task["method"]["supervised"]["hyperparameters"]["num_virtual_tokens"] == 20
    # from an uploaded prefix file (purpose "prefix"): the shipped moral prefix
    r = upload(server, read_bytes(os.path.join(PREFIXES, "moral.safetensors")),
               filename="moral.safetensors", purpose="prefix")
    assert r.status == 200, r.body
    pfile = r.json()
    assert pfile["purpose"] == "prefix"
    moral_train = upload_ok(server, "moral.valid.jsonl")
    fresh_moral = job_ok(server, moral_train, seed=2,
                         method=supervised(n_epochs=1, num_virtual_tokens=20))
    from_file = job_ok(server, moral_train, seed=2, suffix="moral-more",
                       method=supervised(n_epochs=1, init_from=pfile["id"]))
    for j in (fresh, from_task, fresh_moral, from_file):
        done = wait_job(server, j["id"])
        assert done["status"] == "succeeded", done
    # a fresh prefix starts near the base model; one that starts from the trained task far
    # below it on the same first batch (same seed, same order)
    assert first_loss(server, from_task["id"]) < 0.7 * first_loss(server, fresh["id"])
    assert first_loss(server, from_file["id"]) < 0.7 * first_loss(server, fresh_moral["id"])

    # refused clearly: an unknown task, a file that is not a prefix, a prompt-built prefix
    r = create_job(server, train, method=supervised(init_from="no-such-task"))
    assert r.status == 400 and r.json()["error"]["param"] == "init_from", r.body
    r = upload(server, b"not a prefix", filename="x.safetensors", purpose="prefix")
    assert r.status == 400 and r.json()["error"]["param"] == "file", r.body
    r = create_job(server, train, method=supervised(init_from="dragon", prefix_projection=True))
    assert r.status == 400 and r.json()["error"]["param"] == "init_from", r.body


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


# ---- estimated finish, gauges --------------------------------------------------------------

def test_estimated_finish_and_gauges_reset_on_cancel(server):
    train = upload_ok(server, "dragon.train.jsonl")
    job = job_ok(server, train, seed=4, method=supervised(n_epochs=50, num_virtual_tokens=4))
    deadline = time.time() + 120
    while True:
        j = get_job(server, job["id"])
        if j["status"] == "running" and j["estimated_finish"] is not None:
            break
        assert time.time() < deadline, j
        time.sleep(0.05)
    assert j["estimated_finish"] > j["created_at"]
    mx = server.metrics()
    # 100 examples, 10 of them split off for validation: 23 steps per epoch
    assert mx["prefixd_training_active"] == 1 and mx["prefixd_training_total_steps"] == 1150
    assert mx["prefixd_training_step"] >= 1
    r = server.request("POST", f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert r.status == 200
    done = wait_job(server, job["id"])
    assert done["status"] == "cancelled" and done["estimated_finish"] is None
    assert len(done["result_files"]) == 1  # the metrics up to the cancel
    mx = server.metrics()
    assert mx["prefixd_training_active"] == 0
    assert mx["prefixd_training_step"] == 0 and mx["prefixd_training_total_steps"] == 0
    assert mx["prefixd_training_tokens_per_second"] == 0


# ---- requests refused ----------------------------------------------------------------------

def test_bad_settings_refused(server):
    train = upload_ok(server, "dragon.valid.jsonl")
    for hp, param in (({"lr_scheduler_type": "step"}, "lr_scheduler_type"),
                      ({"warmup_ratio": 1.5}, "warmup_ratio"),
                      ({"weight_decay": -1}, "weight_decay"),
                      ({"max_grad_norm": "x"}, "max_grad_norm"),
                      ({"early_stopping_patience": -1}, "early_stopping_patience"),
                      ({"eval_every": 1.5}, "eval_every"),
                      ({"n_epochs": "many"}, "n_epochs")):
        r = create_job(server, train, method=supervised(**hp))
        assert r.status == 400 and r.json()["error"]["param"] == param, (hp, r.body)
    r = create_job(server, train, method={"type": "reinforcement"})
    assert r.status == 400 and r.json()["error"]["param"] == "method"
    assert "supervised" in r.json()["error"]["message"]
    r = create_job(server, train, hyperparameters={"n_epochs": 2}, method=supervised(n_epochs=3))
    assert r.status == 400 and r.json()["error"]["param"] == "hyperparameters"
    # no method at all is the supervised method with the defaults; n_epochs "auto" is kept
    job = job_ok(server, train)
    assert job["method"]["type"] == "supervised"
    assert job["method"]["supervised"]["hyperparameters"]["n_epochs"] == "auto"
    server.request("POST", f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    r = server.request("GET", f"/v1/fine_tuning/jobs/{job['id']}/checkpoints?after=ftckpt-nope")
    assert r.status == 400 and r.json()["error"]["param"] == "after"
    assert server.request("GET", "/v1/fine_tuning/jobs/ftjob-nope/checkpoints").status == 404


# ---- PEFT export ----------------------------------------------------------------------------

def test_peft_export_round_trip(server, tmp_path):
    r = server.request("GET", "/v1/prefixes/dragon?format=peft")
    assert r.status == 200, r.body
    assert r.header("Content-Type") == "application/x-tar"
    (tmp_path / "adapter").mkdir()
    with tarfile.open(fileobj=io.BytesIO(r.body)) as tar:
        assert sorted(tar.getnames()) == ["adapter_config.json", "adapter_model.safetensors"]
        for m in tar.getmembers():
            assert m.isfile() and m.mode == 0o644
            (tmp_path / "adapter" / m.name).write_bytes(tar.extractfile(m).read())
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "PREFIX_TUNING" and cfg["num_virtual_tokens"] == 20
    assert cfg["task_type"] == "CAUSAL_LM" and cfg["prefix_projection"] is False
    # the adapter holds HF's layout, computed here: prompt_embeddings[t] is, per layer, the
    # keys then the values of every kv head; a key head in HF's rotary layout holds the
    # even components of ours, then the odd ones (llama files rotate adjacent pairs)
    import numpy as np
    L, KVH, kv_dim = cfg["num_layers"], cfg["num_attention_heads"], cfg["token_dim"]
    hd, P = kv_dim // KVH, cfg["num_virtual_tokens"]
    ours = read_prefix(os.path.join(PREFIXES, "dragon.safetensors"))
    keys = np.frombuffer(ours["keys"], np.float32).reshape(L, KVH, P, hd)
    values = np.frombuffer(ours["values"], np.float32).reshape(L, KVH, P, hd)
    emb = np.frombuffer(read_prefix(str(tmp_path / "adapter" / "adapter_model.safetensors"))[
        "prompt_embeddings"], np.float32).reshape(P, L, 2, KVH, hd)
    hf_keys = np.concatenate([keys[..., 0::2], keys[..., 1::2]], axis=-1)
    assert np.array_equal(emb[:, :, 0].transpose(1, 2, 0, 3), hf_keys)
    assert np.array_equal(emb[:, :, 1].transpose(1, 2, 0, 3), values)
    run("prefix", "import-peft", str(tmp_path / "adapter"), "--model", MODEL, "--tokenizer",
        TOKENIZER, "--task", "back", "--out", str(tmp_path))
    orig = read_prefix(os.path.join(PREFIXES, "dragon.safetensors"))
    back = read_prefix(str(tmp_path / "back.safetensors"))
    assert orig["keys"] == back["keys"] and orig["values"] == back["values"]

    # the CLI writes the same two files
    run("prefix", "export-peft", os.path.join(PREFIXES, "dragon.safetensors"), "--model", MODEL,
        "--tokenizer", TOKENIZER, "--out", str(tmp_path / "cli"))
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "adapter" / name).read_bytes()

    # a prompt-built prefix holds BOS, which a PEFT prefix cannot: refused clearly
    r = server.request("GET", "/v1/prefixes/story?format=peft")
    assert r.status == 409 and "BOS" in r.json()["error"]["message"], r.body
    r = server.request("GET", "/v1/prefixes/dragon?format=zip")
    assert r.status == 400 and r.json()["error"]["param"] == "format"
    assert server.request("GET", "/v1/prefixes/nope?format=peft").status == 404
