"""Checks run on every generated model variant (test_arch.py: architectures,
test_quant_models.py: weight types): serving with a prompt-built task, and
`prefixd train` lowering the validation loss."""
import os
import re

from conftest import ROOT, run
from server_util import Server

PRE, REQ = "Once upon a time", "there was a"


def check_prompt_built_task(path, name, tmp_path, what, nonempty=False):
    """The server's greedy completion of PRE + REQ (model name) is the command
    line's, and a task built from PRE continues REQ exactly like it."""
    reg = tmp_path / "registry"
    reg.mkdir()
    run("prefix", "from-prompt", "--model", path, "--task", "t", "--text", PRE, "--out",
        str(reg))
    with Server(tmp_path, str(reg), config={"model": path, "tokenizer": None}) as s:
        base = s.complete(model=name, prompt=PRE + " " + REQ, max_tokens=12, temperature=0)
        text = base["choices"][0]["text"]
        assert base["usage"]["completion_tokens"] == 12 or \
            base["choices"][0]["finish_reason"] == "stop", (what, base)
        if nonempty:
            assert text, what
        cli = run("generate", "--model", path, "--prompt", PRE + " " + REQ, "--max-tokens",
                  "12", "--temperature", "0").stdout
        assert text in cli, (what, text, cli)
        task = s.complete(model="t", prompt=REQ, max_tokens=12, temperature=0)
        assert task["choices"][0]["text"] == text, what
        assert task["usage"]["completion_tokens"] == base["usage"]["completion_tokens"], what


def check_training_lowers_loss(path, tmp_path, what, extra=()):
    """A few steps of `prefixd train` on five dragon lines bring the
    validation loss below the base model's; returns the directory holding
    the task file t.safetensors."""
    data = tmp_path / "train.jsonl"
    with open(os.path.join(ROOT, "tests/data/train/dragon.train.jsonl")) as f:
        data.write_text("".join(f.readlines()[:5]))
    out_dir = tmp_path / "registry"
    out_dir.mkdir()
    out = run("train", "--model", path, "--data", str(data), "--task", "t", "--out",
              str(out_dir), "--virtual-tokens", "4", "--epochs", "3", "--batch-size", "2",
              "--lr", "0.1", *extra).stdout
    m = re.search(r"validation loss ([0-9.]+) \(base model ([0-9.]+)\)", out)
    assert m, out
    assert float(m.group(1)) < float(m.group(2)), (what, out)
    assert (out_dir / "t.safetensors").exists()
    return out_dir
