"""Issue 10's "done when", end to end through the real binary: GGUFs of the
file types people download — F16, BF16, Q8_0, Q6_K, Q5_K_M and Q4_K_M — made
by `prefixd quantize` from a random-weight Llama whose rows are multiples of
256 (so the K-quants are real K-quants, not 32-block fallbacks), with a real
SentencePiece vocabulary. Each one: inspect shows the expected tensor types;
`prefixd serve` answers /v1/completions and the greedy text equals `prefixd
generate`'s; a prompt-built task (`prefix from-prompt` on the quantised model)
continues exactly like the prompt written out; and `prefixd train` learns a
prefix on it, weights staying quantised, with a validation loss below the
base model's, and the trained task is served."""
import os
import re
import subprocess

import pytest

from conftest import BIN, ROOT, run
from server_util import Server

SYNTH = os.path.join(os.path.dirname(BIN), "tools", "prefixd-synth")
VOCAB = os.path.join(ROOT, "tests/data/vocab/ggml-vocab-llama-spm.gguf")
PRE, REQ = "Once upon a time", "there was a"

# file type -> the type `inspect` must show for blk.0.attn_q.weight
TYPES = {"F16": "F16", "BF16": "BF16", "Q8_0": "Q8_0", "Q6_K": "Q6_K", "Q5_K_M": "Q5_K",
         "Q4_K_M": "Q4_K"}


@pytest.fixture(scope="module")
def f32_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("f32") / "llama-f32.gguf"
    subprocess.run([SYNTH, "--arch", "llama", "--vocab", VOCAB, "--dim", "256", "--hidden",
                    "512", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--ctx", "256",
                    "--tied", "--seed", "11", "--out", str(path)],
                   check=True, capture_output=True, timeout=120)
    return str(path)


@pytest.fixture(scope="module", params=sorted(TYPES))
def qmodel(request, f32_model, tmp_path_factory):
    ftype = request.param
    out = tmp_path_factory.mktemp(ftype) / f"llama-{ftype}.gguf"
    run("quantize", f32_model, str(out), "--type", ftype)
    return ftype, str(out)


def test_inspect_shows_the_types(qmodel):
    ftype, path = qmodel
    out = run("inspect", path).stdout
    m = re.search(r"^\s+blk\.0\.attn_q\.weight\s+\[[^\]]*\]\s+(\S+)", out, re.M)
    assert m, out
    assert m.group(1) == TYPES[ftype], (ftype, m.group(1))


def test_serve_generate_and_task(qmodel, tmp_path):
    ftype, path = qmodel
    reg = tmp_path / "registry"
    reg.mkdir()
    run("prefix", "from-prompt", "--model", path, "--task", "t", "--text", PRE, "--out",
        str(reg))
    with Server(tmp_path, str(reg), config={"model": path, "tokenizer": None}) as s:
        base = s.complete(model=os.path.splitext(os.path.basename(path))[0],
                          prompt=PRE + " " + REQ, max_tokens=12, temperature=0)
        text = base["choices"][0]["text"]
        cli = run("generate", "--model", path, "--prompt", PRE + " " + REQ, "--max-tokens",
                  "12", "--temperature", "0").stdout
        assert text and text in cli, (ftype, text, cli)
        task = s.complete(model="t", prompt=REQ, max_tokens=12, temperature=0)
        assert task["choices"][0]["text"] == text, ftype
        assert task["usage"]["completion_tokens"] == base["usage"]["completion_tokens"]


def test_train_a_task(qmodel, tmp_path):
    ftype, path = qmodel
    data = tmp_path / "train.jsonl"
    with open(os.path.join(ROOT, "tests/data/train/dragon.train.jsonl")) as f:
        data.write_text("".join(f.readlines()[:5]))
    reg = tmp_path / "registry"
    reg.mkdir()
    out = run("train", "--model", path, "--data", str(data), "--task", "t", "--out", str(reg),
              "--virtual-tokens", "4", "--epochs", "3", "--batch-size", "2", "--lr", "0.1",
              "--seed", "1").stdout
    m = re.search(r"validation loss ([0-9.]+) \(base model ([0-9.]+)\)", out)
    assert m, out
    assert float(m.group(1)) < float(m.group(2)), (ftype, out)
    assert (reg / "t.safetensors").exists()
    with Server(tmp_path, str(reg), config={"model": path, "tokenizer": None}) as s:
        r = s.complete(model="t", prompt="Once", max_tokens=4, temperature=0)
        assert r["usage"]["completion_tokens"] >= 1
