"""Context distillation over REST (issue 16): a distill job compresses a long
teacher prompt (>= 100 tokens) into an 8-slot prefix on the shipped
stories260K, against the real `prefixd serve` on 127.0.0.1.

- held-out KL(teacher ‖ student) in nats/token drops at least 5x below
  KL(teacher ‖ base model without the prompt), and top-1 agreement with the
  teacher rises, in the metrics events, the prefix's GET entry and the
  final figures (printed with -s);
- the same seed gives the same samples (the same training loss at every
  step) and the same prefix bits; another seed other samples;
- bad distill requests are 400s naming the parameter.

The job is small: 64 samples of 32 tokens, 4 epochs of 15 steps."""
import json
import os
import struct

import pytest

from server_util import Server
from test_training import BASE, TRAIN_TIMEOUT, events, get_job, upload, wait_job

TEACHER = (
    "Once upon a time, there was a little dog named Max. Max lived in a big red house with a "
    "girl named Sue. Every day, Max and Sue went to the park to play with a big blue ball. Max "
    "loved to run after the ball and bring it back to Sue. One day, the ball went into the "
    "pond. Max jumped into the water and swam to get the ball. Sue laughed and clapped her "
    "hands. \"Good dog, Max!\" she said. Max was wet and happy. They walked home together in "
    "the sun.")

INPUTS = ["Max", "Sue", "The next day,", "Max saw", "Sue said", "The ball", "Then", "One day,"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distill")
    registry = tmp / "registry"
    registry.mkdir()
    cfg = {"max_file_bytes": 262144, "checkpoint_every": 0, "train_metrics_every": 1}
    with Server(tmp, str(registry), config=cfg) as s:
        yield s


@pytest.fixture(scope="module")
def inputs(server):
    data = "".join(json.dumps({"text": t}) + "\n" for t in INPUTS).encode()
    r = upload(server, data, filename="inputs.jsonl")
    assert r.status == 200, (r.status, r.body)
    return r.json()["id"]


def distill(server, inputs, suffix, seed=3, **hp):
    settings = {"teacher_prompt": TEACHER, "num_virtual_tokens": 8, "n_samples": 64,
                "sample_length": 32, "n_epochs": 4, "eval_every": 5, **hp}
    body = {"model": BASE, "training_file": inputs, "seed": seed, "suffix": suffix,
            "method": {"type": "distill", "distill": {"hyperparameters": settings}}}
    return server.request("POST", "/v1/fine_tuning/jobs", body)


def run_ok(server, inputs, suffix, **kw):
    r = distill(server, inputs, suffix, **kw)
    assert r.status == 200, (r.status, r.body)
    job = wait_job(server, r.json()["id"], timeout=TRAIN_TIMEOUT)
    assert job["status"] == "succeeded", (job, server.logs())
    return job


def step_metrics(server, job_id):
    return {e["data"]["step"]: e["data"] for e in events(server, job_id)
            if e["type"] == "metrics" and "step" in (e.get("data") or {})
            and not e["data"].get("final")}


def tensors(server, task):
    """The prefix file's tensor bytes (the metadata carries times)."""
    with open(os.path.join(server.registry, task + ".safetensors"), "rb") as f:
        b = f.read()
    n = struct.unpack("<Q", b[:8])[0]
    return b[8 + n:]


def test_distill_compresses_the_prompt(server, inputs):
    job = run_ok(server, inputs, "dog")
    assert job["method"]["type"] == "distill"
    hp = job["method"]["distill"]["hyperparameters"]
    assert hp["teacher_prompt"] == TEACHER and hp["init"] == "prompt" and hp["ce_weight"] == 0

    m = step_metrics(server, job["id"])
    evals = {s: d for s, d in m.items() if d.get("valid_kl") is not None}
    assert len(evals) >= 4, m
    first, last = evals[min(evals)], evals[max(evals)]
    assert all(d["valid_kl"] == d["valid_loss"] for d in evals.values())
    assert last["valid_kl"] < first["valid_kl"]

    r = server.request("GET", "/v1/prefixes/dog")
    assert r.status == 200, r.body
    e = r.json()
    assert e["num_virtual_tokens"] == 8 and e["has_bos"] is True and e["source"] == "trained"
    d = e["distillation"]
    print(f"\ndistill: prompt {d['prompt_tokens']:.0f} tokens -> 8 slots; held-out KL "
          f"{d['valid_kl']:.4f} nats/token (base without the prompt {d['base_kl']:.4f}, "
          f"{d['base_kl'] / d['valid_kl']:.1f}x lower); top-1 agreement "
          f"{d['top1_agreement']:.3f} (base {d['base_top1_agreement']:.3f}); first evaluation "
          f"KL {first['valid_kl']:.4f}")
    assert d["prompt_tokens"] >= 100
    assert d["compression"] == pytest.approx(d["prompt_tokens"] / 8, abs=0.01)
    assert d["valid_kl"] == pytest.approx(last["valid_kl"], rel=1e-4)
    assert d["valid_kl"] * 5 <= d["base_kl"], d
    assert d["top1_agreement"] >= d["base_top1_agreement"] + 0.1, d

    # the task serves, without BOS in the request (the prefix holds it)
    out = server.complete(model="dog", prompt="Max", max_tokens=20, temperature=0)
    assert out["choices"][0]["text"]


def test_same_seed_same_samples_and_bits(server, inputs):
    a = run_ok(server, inputs, "dog-a", seed=11, n_epochs=1)
    b = run_ok(server, inputs, "dog-b", seed=11, n_epochs=1)
    c = run_ok(server, inputs, "dog-c", seed=12, n_epochs=1)
    la = {s: d["train_loss"] for s, d in step_metrics(server, a["id"]).items()}
    lb = {s: d["train_loss"] for s, d in step_metrics(server, b["id"]).items()}
    lc = {s: d["train_loss"] for s, d in step_metrics(server, c["id"]).items()}
    assert la == lb and la != lc
    assert tensors(server, "dog-a") == tensors(server, "dog-b")
    assert tensors(server, "dog-a") != tensors(server, "dog-c")


def test_teacher_messages_render_with_the_template(server, inputs):
    """teacher_messages: rendered (stories260K has no template: chatml) and stored as
    teacher_prompt, so GET shows what the teacher runs; the job then trains on it."""
    msgs = [{"role": "system", "content": TEACHER}]
    r = distill(server, inputs, "dog-chat", teacher_prompt=None, teacher_messages=msgs,
                n_epochs=1, n_samples=8, sample_length=8, num_virtual_tokens=4)
    assert r.status == 200, (r.status, r.body)
    hp = r.json()["method"]["distill"]["hyperparameters"]
    assert hp["teacher_prompt"] == f"<|im_start|>system\n{TEACHER}<|im_end|>\n", hp
    assert hp["teacher_messages"] == msgs
    job = wait_job(server, r.json()["id"], timeout=TRAIN_TIMEOUT)
    assert job["status"] == "succeeded", (job, server.logs())


@pytest.mark.parametrize("hp,param", [
    ({"teacher_prompt": None}, "teacher_prompt"),
    ({"teacher_messages": [{"role": "system", "content": "x"}]}, "teacher_messages"),
    ({"num_virtual_tokens": 400}, "num_virtual_tokens"),
    ({"temperature": 0}, "temperature"),
    ({"ce_weight": 1.5}, "ce_weight"),
    ({"init": "middle"}, "init"),
    ({"init_text": "Once"}, "init_text"),
    ({"prefix_projection": True}, "prefix_projection"),
    ({"n_samples": 1}, "n_samples"),
])
def test_bad_distill_requests(server, inputs, hp, param):
    r = distill(server, inputs, "bad", **hp)
    assert r.status == 400, (r.status, r.body)
    assert r.json()["error"]["param"] == param, r.body
