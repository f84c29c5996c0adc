"""`prefixd prefix …` and `generate --prefix/--registry` against the shipped
model: a prompt-built prefix continues exactly like the prompt written out
(prompt equivalence at the command line), and bad prefix files fail with one
clear line."""
import os

from conftest import MODEL, run

# (prefix text, request text): tokenisation does not merge across the boundary
PAIRS = [
    ("Once upon a time", "there was a"),
    ("Lily and Ben were friends.", "One day they"),
    ("The sun was hot.", "Tom went to the"),
]


def _gen(*extra, prompt, n=60):
    return run("generate", "--model", MODEL, "--prompt", prompt, "--max-tokens", str(n),
               "--temperature", "0", "--ids", *extra).stdout.strip()


def test_from_prompt_equals_prompt_written_out(tmp_path):
    for i, (pre, req) in enumerate(PAIRS):
        task = f"t{i}"
        run("prefix", "from-prompt", "--model", MODEL, "--task", task, "--text", pre,
            "--out", str(tmp_path))
        path = tmp_path / f"{task}.safetensors"
        assert path.exists()
        with_prefix = _gen("--prefix", str(path), prompt=req)
        via_registry = _gen("--registry", str(tmp_path), "--task", task, prompt=req)
        plain = _gen(prompt=pre + " " + req)
        assert with_prefix == plain, (pre, req)
        assert via_registry == plain


def test_prefix_inspect(tmp_path):
    run("prefix", "from-prompt", "--model", MODEL, "--task", "story", "--text",
        "Once upon a time", "--out", str(tmp_path))
    out = run("prefix", "inspect", str(tmp_path / "story.safetensors"), "--model", MODEL).stdout
    assert "story" in out
    assert "prefixd.prefix/1" in out
    assert "prompt" in out


def test_bad_prefix_file_one_line(tmp_path):
    run("prefix", "from-prompt", "--model", MODEL, "--task", "ok", "--text", "Once upon a time",
        "--out", str(tmp_path))
    good = (tmp_path / "ok.safetensors").read_bytes()
    bad = tmp_path / "bad.safetensors"
    for blob in (good[: len(good) // 2], b"", b"\x10" + b"\0" * 7 + b"{not json}" * 3):
        bad.write_bytes(blob)
        p = run("generate", "--model", MODEL, "--prompt", "x", "--max-tokens", "3",
                "--prefix", str(bad), check=False)
        assert p.returncode != 0
        lines = [l for l in p.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and str(bad) in lines[0], p.stderr


def test_bad_task_names_refused(tmp_path):
    for name in ("../x", "", "a" * 65, "a/b"):
        p = run("prefix", "from-prompt", "--model", MODEL, "--task", name, "--text", "Hi",
                "--out", str(tmp_path), check=False)
        assert p.returncode != 0, name
    assert not any(f for f in os.listdir(tmp_path) if not f.startswith("."))


def test_unknown_task(tmp_path):
    p = run("generate", "--model", MODEL, "--prompt", "x", "--registry", str(tmp_path),
            "--task", "nope", check=False)
    assert p.returncode != 0
    assert "nope" in p.stderr
