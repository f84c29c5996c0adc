"""The architectures of the GGUF files people download, end to end: a
Llama-3-shaped model (grouped-query attention, Llama 3.1 rope factors), a
Qwen3-shaped one (q/k head norms, NeoX rotary, head size 32 with dim 64 and
4 heads) and a Phi-3-shaped one (fused matrices, a sliding window capping the
context) with random weights and a real SentencePiece vocabulary, written by
build/tools/prefixd-synth. Each is inspected, served by `prefixd serve`
(/v1/completions), and takes a prompt-built task from `prefixd prefix
from-prompt`; the task's greedy completion equals the base model's on the
prompt written out (prompt equivalence over HTTP), and a few training steps
lower its validation loss. The same shapes with their real byte-level BPE
vocabularies (Llama 3's, Qwen 3's) are served and take a task too."""
import os
import subprocess

import pytest

from conftest import BIN, ROOT, run
from model_checks import PRE, REQ, check_prompt_built_task, check_training_lowers_loss
from server_util import Server

SYNTH = os.path.join(os.path.dirname(BIN), "tools", "prefixd-synth")
VOCAB = os.path.join(ROOT, "tests/data/vocab/ggml-vocab-llama-spm.gguf")

SHAPES = {
    "llama3": ["--arch", "llama", "--dim", "64", "--hidden", "160", "--layers", "2",
               "--heads", "4", "--kv-heads", "2", "--rope-scaling", "llama3",
               "--rope-orig-ctx", "128"],
    "qwen3": ["--arch", "qwen3", "--dim", "64", "--hidden", "160", "--layers", "2",
              "--heads", "4", "--kv-heads", "2", "--head-dim", "32"],
    "phi3": ["--arch", "phi3", "--dim", "64", "--hidden", "160", "--layers", "2",
             "--heads", "4", "--kv-heads", "4", "--sliding-window", "128"],
}
# each shape's vocabulary: SentencePiece ones (Phi-3's own for phi3)
SPM = {"llama3": VOCAB, "qwen3": VOCAB,
       "phi3": os.path.join(ROOT, "tests/data/vocab/ggml-vocab-phi-3.gguf")}
EXPECT = {
    "llama3": ["architecture: llama", "rope_type: norm", "rope_scaling: llama3"],
    "qwen3": ["architecture: qwen3", "rope_type: neox", "qk_norm: yes", "q_dim: 128"],
    "phi3": ["architecture: phi3", "rope_type: neox", "sliding_window: 128", "seq_len: 128"],
}
# the real byte-level BPE vocabularies the Makefile builds from the npm
# packages (make vocabs; $PD_VOCAB_DIR, default build/vocab)
VOCAB_DIR = os.environ.get("PD_VOCAB_DIR") or os.path.join(ROOT, "build/vocab")
BPE = {"llama3": "llama3.gguf", "qwen3": "qwen3.gguf"}


def synth(name, vocab, path, *extra):
    subprocess.run([SYNTH, *SHAPES[name], "--vocab", vocab, "--ctx", "256", "--seed", "3",
                    *extra, "--out", str(path)], check=True, capture_output=True, timeout=120)
    return str(path)


@pytest.fixture(scope="module", params=sorted(SHAPES))
def model(request, tmp_path_factory):
    name = request.param
    return name, synth(name, SPM[name], tmp_path_factory.mktemp(name) / f"{name}.gguf")


@pytest.mark.parametrize("name", sorted(BPE))
def test_real_bpe_vocabulary(name, tmp_path):
    """The same shapes with their own model's tokenizer (Llama 3's and Qwen 3's
    byte-level BPE, tied classifier to keep the file small): served, and a
    prompt-built task continues like the prompt written out. BPE has no space
    prefix, so the request carries its own leading space."""
    vocab = os.path.join(VOCAB_DIR, BPE[name])
    assert os.path.exists(vocab), f"{vocab} is missing: `make vocabs` builds it"
    path = synth(name, vocab, tmp_path / f"{name}.gguf", "--tied")
    out = run("inspect", path).stdout
    assert "tokenizer: bpe" in out and EXPECT[name][0] in out, out
    reg = tmp_path / "registry"
    reg.mkdir()
    req = " " + REQ
    run("prefix", "from-prompt", "--model", path, "--task", "t", "--text", PRE, "--out",
        str(reg))
    with Server(tmp_path, str(reg), config={"model": path, "tokenizer": None}) as s:
        base = s.complete(model=name, prompt=PRE + req, max_tokens=10, temperature=0)
        task = s.complete(model="t", prompt=req, max_tokens=10, temperature=0)
        assert task["choices"][0]["text"] == base["choices"][0]["text"]
        assert task["usage"]["completion_tokens"] == base["usage"]["completion_tokens"]


def test_inspect_names_the_architecture(model):
    name, path = model
    out = run("inspect", path).stdout
    for line in EXPECT[name]:
        assert line in out, (line, out)


def test_serve_and_prompt_built_task(model, tmp_path):
    name, path = model
    check_prompt_built_task(path, name, tmp_path, name)


def test_train_a_task(model, tmp_path):
    """A few steps of `prefixd train` through the architecture lower the
    validation loss below the base model's."""
    name, path = model
    check_training_lowers_loss(path, tmp_path, name)
