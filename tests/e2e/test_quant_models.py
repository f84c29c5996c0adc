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
from model_checks import check_prompt_built_task, check_training_lowers_loss
from server_util import Server

SYNTH = os.path.join(os.path.dirname(BIN), "tools", "prefixd-synth")
VOCAB = os.path.join(ROOT, "tests/data/vocab/ggml-vocab-llama-spm.gguf")

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
    check_prompt_built_task(path, os.path.splitext(os.path.basename(path))[0], tmp_path, ftype,
                            nonempty=True)


def test_train_a_task(qmodel, tmp_path):
    ftype, path = qmodel
    reg = check_training_lowers_loss(path, tmp_path, ftype, ("--seed", "1"))
    with Server(tmp_path, str(reg), config={"model": path, "tokenizer": None}) as s:
        r = s.complete(model="t", prompt="Once", max_tokens=4, temperature=0)
        assert r["usage"]["completion_tokens"] >= 1
