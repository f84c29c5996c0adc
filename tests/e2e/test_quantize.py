"""`prefixd quantize` and `convert --dtype TYPE` through the real binary: every
file type from the llama2.c original, inspect's per-tensor types and bits per
weight, generation from the result, the round trip through F32 back to Q8_0
byte for byte, atomic output, bad arguments and inputs with one clear line,
and the resident weight bytes in the server's startup log and /metrics."""
import os
import re
import struct

from conftest import MODEL, TOKENIZER, run
from server_util import Server

TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S",
         "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K"]
FILE_TYPE = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10,
             "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16,
             "Q5_K_M": 17, "Q6_K": 18, "BF16": 32}


def gguf_u32(path, key):
    """The value of a u32 key, read with a minimal GGUF v3 walk (independent of prefixd)."""
    data = open(path, "rb").read()
    assert data[:4] == b"GGUF"
    _, n_tensors, n_kv = struct.unpack_from("<IQQ", data, 4)
    at = 24
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def skip(t, at):
        if t in sizes:
            return at + sizes[t]
        if t == 8:
            (n,) = struct.unpack_from("<Q", data, at)
            return at + 8 + n
        et, n = struct.unpack_from("<IQ", data, at)
        at += 12
        for _ in range(n):
            at = skip(et, at)
        return at

    for _ in range(n_kv):
        (n,) = struct.unpack_from("<Q", data, at)
        k = data[at + 8: at + 8 + n].decode()
        at += 8 + n
        (t,) = struct.unpack_from("<I", data, at)
        at += 4
        if k == key:
            assert t == 4
            return struct.unpack_from("<I", data, at)[0]
        at = skip(t, at)
    return None


def tensor_types(path):
    """name -> (type, bits per weight) from `prefixd inspect`."""
    out = run("inspect", path).stdout
    types = {}
    for m in re.finditer(r"^\s+(\S+)\s+\[[^\]]*\]\s+(\S+)\s+([0-9.]+) bpw", out, re.M):
        types[m.group(1)] = (m.group(2), float(m.group(3)))
    return out, types


def test_every_type_from_llama2c(tmp_path):
    sizes = {}
    for t in TYPES:
        out = tmp_path / f"m-{t}.gguf"
        p = run("quantize", MODEL, str(out), "--type", t, "--tokenizer", TOKENIZER)
        assert f"wrote {out} ({t})" in p.stderr, p.stderr
        assert gguf_u32(str(out), "general.file_type") == FILE_TYPE[t]
        assert gguf_u32(str(out), "general.quantization_version") == 2
        text, types = tensor_types(str(out))
        assert f"file_type: {t} ({FILE_TYPE[t]})" in text
        assert types["blk.0.attn_norm.weight"] == ("F32", 32.0)
        # rows of 64 take the 32-element blocks; ffn_down's rows of 172 none
        if t not in ("F32", "F16", "BF16"):
            assert types["blk.0.ffn_down.weight"][0] == "F16"
            assert types["token_embd.weight"] == ("Q8_0", 8.5)
        sizes[t] = os.path.getsize(out)
        m = re.search(r"resident_weight_bytes: (\d+)", text)
        assert m and int(m.group(1)) < os.path.getsize(out)
        # the quantised model generates (greedy, text of the story's world)
        g = run("generate", "--model", str(out), "--prompt", "Once upon a time", "--max-tokens",
                "8", "--temperature", "0").stdout
        assert len(g) > 8
    assert sizes["Q8_0"] < sizes["F16"] < sizes["F32"]
    assert sizes["Q4_0"] < sizes["Q5_0"] < sizes["Q8_0"]
    # per-tensor types of two files
    _, q8 = tensor_types(str(tmp_path / "m-Q8_0.gguf"))
    assert q8["blk.3.attn_q.weight"] == ("Q8_0", 8.5)
    _, q4 = tensor_types(str(tmp_path / "m-Q4_K_M.gguf"))
    assert q4["blk.3.attn_q.weight"] == ("Q5_0", 5.5)  # Q4_K's fallback for rows of 64


def test_round_trip_stable(tmp_path):
    a, f, b = (str(tmp_path / n) for n in ("a.gguf", "f.gguf", "b.gguf"))
    run("quantize", MODEL, a, "--type", "Q8_0", "--tokenizer", TOKENIZER)
    run("quantize", a, f, "--type", "F32")
    run("quantize", f, b, "--type", "q8_0")
    assert open(a, "rb").read() == open(b, "rb").read()
    # quantised → F32 keeps the dequantised values: same fingerprint
    fa = re.search(r"fingerprint: (\w+)", run("inspect", a).stdout).group(1)
    ff = re.search(r"fingerprint: (\w+)", run("inspect", f).stdout).group(1)
    assert fa == ff
    # and the same greedy start (the quantised kernels round activations to 8 bits, so
    # far enough out a near tie may break the other way)
    ga = run("generate", "--model", a, "--prompt", "Once", "--max-tokens", "12",
             "--temperature", "0", "--ids").stdout
    gf = run("generate", "--model", f, "--prompt", "Once", "--max-tokens", "12",
             "--temperature", "0", "--ids").stdout
    assert ga == gf


def test_convert_dtype_quantized(tmp_path):
    out = tmp_path / "c.gguf"
    run("convert", "--model", MODEL, "--tokenizer", TOKENIZER, "--out", str(out), "--dtype",
        "q4_k_m", "--name", "tiny")
    assert gguf_u32(str(out), "general.file_type") == 15
    _, types = tensor_types(str(out))
    # 5 layers: the "more bits" layers are 2 and 4 (Q6_K, whose fallback for rows of 64 is
    # Q8_0), the others Q4_K (fallback Q5_0)
    assert [types[f"blk.{i}.attn_v.weight"][0] for i in range(5)] == \
        ["Q5_0", "Q5_0", "Q8_0", "Q5_0", "Q8_0"]
    assert sorted(os.listdir(tmp_path)) == ["c.gguf"]  # no temporary file left


def test_pure(tmp_path):
    out = tmp_path / "p.gguf"
    run("quantize", MODEL, str(out), "--type", "Q4_0", "--pure", "--tokenizer", TOKENIZER)
    _, types = tensor_types(str(out))
    assert types["token_embd.weight"][0] == "Q4_0"


def _one_clear_line(p, *needles):
    assert p.returncode != 0
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert "Sanitizer" not in p.stderr


def test_bad_arguments_and_inputs(tmp_path):
    out = str(tmp_path / "x.gguf")
    p = run("quantize", MODEL, out, "--type", "IQ4_XS", check=False)
    _one_clear_line(p, "IQ4_XS", "Q4_K_M")
    assert p.returncode == 2
    p = run("quantize", MODEL, out, check=False)
    _one_clear_line(p, "usage")
    p = run("convert", "--model", MODEL, "--out", out, "--dtype", "q9", check=False)
    _one_clear_line(p, "q9")
    p = run("quantize", "/nonexistent.gguf", out, "--type", "Q8_0", check=False)
    _one_clear_line(p, "/nonexistent.gguf")
    bad = tmp_path / "trunc.gguf"
    q8 = tmp_path / "q8.gguf"
    run("quantize", MODEL, str(q8), "--type", "Q8_0", "--tokenizer", TOKENIZER)
    bad.write_bytes(q8.read_bytes()[:-5000])
    p = run("quantize", str(bad), out, "--type", "Q4_0", check=False)
    _one_clear_line(p, str(bad))
    p = run("generate", "--model", str(bad), "--prompt", "x", check=False)
    _one_clear_line(p, str(bad))
    assert not os.path.exists(out)


def test_server_reports_resident_weights(tmp_path):
    q8 = tmp_path / "q8.gguf"
    run("quantize", MODEL, str(q8), "--type", "Q8_0", "--tokenizer", TOKENIZER)
    resident = int(re.search(r"resident_weight_bytes: (\d+)", run("inspect", str(q8)).stdout)
                   .group(1))
    reg = tmp_path / "registry"
    reg.mkdir()
    with Server(tmp_path, str(reg), config={"model": str(q8)}) as s:
        r = s.request("GET", "/metrics")
        assert r.status == 200
        m = re.search(r"^prefixd_model_weight_resident_bytes (\d+)$", r.body.decode(), re.M)
        assert m and int(m.group(1)) == resident
        assert re.search(r"^prefixd_model_weight_read_bytes_per_token \d+$", r.body.decode(), re.M)
        log = s.logs()
    assert "Q8_0 weights" in log and "MiB resident" in log
