"""The prefixd command line against the shipped model: the reference greedy
story, GGUF conversion, inspect, and bad input giving one clear line."""
import os
import re

from conftest import MODEL, TOKENIZER, run

REF_IDS = (
    "432,383,286,261,376,298,315,421,395,317,426,338,401,396,267,337,410,408,419,292,411,322,"
    "265,282,295,433,426,385,328,432,358,394,261,370,432,352,266,268,388,426,338,391,266,267,"
    "337,335,312,432,398,312,286,267,414,270,333,415,426,13,438,310,439,419,357,336,432,313,"
    "438,310,432,278,316,439,419,298,414,267,265,282,295,433,426,436,317,286,296,418,269,279,"
    "292,416,439,413,409,416,327,263,415,294,267,400,426,338,336,432,313,442,391,267,337,335,"
    "364,420,268,388,432,398,359,280,303,439,413,272,417,264,312,426,436,13,438,310,286,296,"
    "418,269,279,292,416,439,413,409,416,327,263,415,294,267,400,426,338,336,432,313,442,439,"
    "423,262,304,420,422,432,317,426,359,279,292,416,439,413,409,416,327,263,415,294,267,400,"
    "426,436,13,438,310,279,292,416,439,413,391,267,281,421,427,311,357,432,384,358"
)

GEN = ["generate", "--model", MODEL, "--tokenizer", TOKENIZER, "--prompt", "Once upon a time",
       "--max-tokens", "196", "--temperature", "0"]


def test_reference_greedy_ids():
    assert run(*GEN, "--ids").stdout.strip() == REF_IDS


def test_reference_greedy_text():
    out = run(*GEN).stdout
    assert out.startswith(", there was a little girl named Lily. She loved to play outside in the park.")


def test_tokenizer_found_beside_model():
    p = run("generate", "--model", MODEL, "--prompt", "Once upon a time", "--max-tokens", "20",
            "--temperature", "0")
    assert p.stdout.startswith(", there was a little girl named Lily.")


def test_seed_reproducible_and_varies():
    args = ["generate", "--model", MODEL, "--prompt", "Once upon a time", "--max-tokens", "60",
            "--temperature", "0.9", "--top-p", "0.9", "--top-k", "40"]
    a = run(*args, "--seed", "11").stdout
    b = run(*args, "--seed", "11").stdout
    c = run(*args, "--seed", "12").stdout
    assert a == b
    assert a != c


def test_gguf_f32_same_text_and_fingerprint(tmp_path):
    out = tmp_path / "m.gguf"
    run("convert", "--model", MODEL, "--tokenizer", TOKENIZER, "--out", str(out))
    g = run("generate", "--model", str(out), "--prompt", "Once upon a time", "--max-tokens",
            "196", "--temperature", "0", "--ids").stdout.strip()
    assert g == REF_IDS
    fp_bin = re.search(r"fingerprint:\s*([0-9a-f]{16})", run("inspect", MODEL).stdout).group(1)
    fp_gguf = re.search(r"fingerprint:\s*([0-9a-f]{16})", run("inspect", str(out)).stdout).group(1)
    assert fp_bin == fp_gguf


def test_gguf_f16_bf16_generate(tmp_path):
    for dt in ("f16", "bf16"):
        out = tmp_path / f"m-{dt}.gguf"
        run("convert", "--model", MODEL, "--out", str(out), "--dtype", dt)
        text = run("generate", "--model", str(out), "--prompt", "Once upon a time",
                   "--max-tokens", "12", "--temperature", "0").stdout
        # half precision keeps the first words of the reference story
        assert text.startswith(", there was a little"), (dt, text)


def test_inspect_lists_hyperparameters():
    out = run("inspect", MODEL).stdout
    for want in ("64", "172", "512"):
        assert want in out
    assert re.search(r"fingerprint:\s*[0-9a-f]{16}", out)


def _one_clear_line(p, path):
    assert p.returncode != 0
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, p.stderr
    assert path in lines[0], lines[0]
    assert "Sanitizer" not in p.stderr


def test_bad_model_files(tmp_path):
    data = open(MODEL, "rb").read()
    cases = {
        "empty.bin": b"",
        "short.bin": data[:20],
        "truncated.bin": data[: len(data) // 2],
        "garbage.bin": b"\xff" * 4096,
        "gguf-badversion.gguf": b"GGUF" + (99).to_bytes(4, "little") + b"\0" * 32,
        "gguf-truncated.gguf": b"GGUF" + (3).to_bytes(4, "little") + b"\0" * 3,
    }
    for name, blob in cases.items():
        path = tmp_path / name
        path.write_bytes(blob)
        p = run("generate", "--model", str(path), "--tokenizer", TOKENIZER, "--prompt", "x",
                "--max-tokens", "3", check=False)
        _one_clear_line(p, str(path))


def test_missing_tokenizer(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(open(MODEL, "rb").read())
    p = run("generate", "--model", str(path), "--prompt", "x", "--max-tokens", "3", check=False)
    _one_clear_line(p, str(path))
    assert "tokenizer" in p.stderr


def test_missing_file():
    p = run("inspect", "/nonexistent/model.bin", check=False)
    _one_clear_line(p, "/nonexistent/model.bin")


def test_context_overflow_refused():
    p = run("generate", "--model", MODEL, "--prompt", "Once upon a time", "--max-tokens", "600",
            check=False)
    assert p.returncode != 0
    assert "context" in p.stderr
