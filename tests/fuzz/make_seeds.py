#!/usr/bin/env python3
"""make_seeds.py — writes the seed corpus of every fuzz target into
tests/fuzz/corpus/<target>/: a handful of small valid inputs (made with
prefixd's own writers: `prefixd convert`, `prefixd quantize`, `prefixd prefix
from-prompt`) and
invalid ones beside them. Run from the repository root after `make`:

    /usr/bin/python3 tests/fuzz/make_seeds.py [build/prefixd]

The inputs are fixed (only the created_at stamp of the prefixes changes
from run to run) and committed; rerun this only to change the seeds. Every
seed stays under 64 KB.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

ROOT = os.getcwd()
BIN = sys.argv[1] if len(sys.argv) > 1 else "build/prefixd"
MODEL = "models/stories260K/stories260K.bin"
TOK = "models/stories260K/tok512.bin"
CORPUS = "tests/fuzz/corpus"
PEFT_SEP = b"\n--adapter_model.safetensors--\n"


def out(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    assert len(data) < 64 * 1024, (target, name, len(data))
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def run(*args):
    r = subprocess.run([BIN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if r.returncode != 0:
        sys.exit("%s %s: %s" % (BIN, " ".join(args), r.stderr.decode()))


def floats(n, seed):
    # small, deterministic, all finite
    return [((i * 7919 + seed * 104729) % 201 - 100) / 400.0 for i in range(n)]


def f32(values):
    return struct.pack("<%df" % len(values), *values)


# ---- llama2.c checkpoints -------------------------------------------------------------------


def llama2c(dim, hidden, layers, heads, kv_heads, vocab, seq_len, shared=True, seed=1):
    hd = dim // heads
    kv = kv_heads * hd
    n = vocab * dim  # embedding
    n += layers * (dim + dim * dim + 2 * kv * dim + dim * dim + dim + 3 * hidden * dim)
    n += dim + seq_len * hd  # rms_final, legacy rope table (real + imag halves)
    if not shared:
        n += vocab * dim
    header = struct.pack("<7i", dim, hidden, layers, heads, kv_heads, vocab if shared else -vocab,
                         seq_len)
    return header + f32(floats(n, seed))


def make_llama2c(tmp):
    tiny = llama2c(8, 16, 1, 2, 1, 512, 16)
    out("llama2c", "tiny-512.bin", tiny)
    out("llama2c", "tiny-untied.bin", llama2c(8, 16, 1, 2, 1, 512, 16, shared=False, seed=2))
    out("llama2c", "vocab3.bin", llama2c(4, 8, 2, 2, 2, 3, 8, seed=3))
    out("llama2c", "vocab32-gqa.bin", llama2c(16, 24, 2, 4, 2, 32, 8, seed=4))
    out("llama2c", "header-only.bin", tiny[:28])
    out("llama2c", "truncated.bin", tiny[: len(tiny) // 2])
    out("llama2c", "zero-dims.bin", struct.pack("<7i", 0, 0, 0, 0, 0, 0, 0))
    out("llama2c", "huge-dims.bin", struct.pack("<7i", 1 << 30, 1 << 30, 1 << 20, 1, 1, -(1 << 30),
                                                1 << 30))
    out("llama2c", "empty.bin", b"")
    paths = {}
    for name, data in [("tiny", tiny), ("vocab3", llama2c(4, 8, 2, 2, 2, 3, 8, seed=3)),
                       ("vocab32", llama2c(16, 24, 2, 4, 2, 32, 8, seed=4))]:
        p = os.path.join(tmp, name + ".bin")
        with open(p, "wb") as f:
            f.write(data)
        paths[name] = p
    return paths


# ---- GGUF -----------------------------------------------------------------------------------

U8, I8, U16, I16, U32, I32, F32T, BOOL, STR, ARR, U64, I64, F64 = range(13)
FMT = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32T: "f", BOOL: "B",
       U64: "Q", I64: "q", F64: "d"}


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gval(t, v):
    if t == STR:
        return gstr(v)
    if t == ARR:
        et, items = v
        body = b"".join(gval(et, x) for x in items)
        return struct.pack("<IQ", et, len(items)) + body
    return struct.pack("<" + FMT[t], v)


def gguf(kvs, tensors, version=3, align=32):
    """kvs: [(key, type, value)]; tensors: [(name, ne, ggml_type, bytes)]."""
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for k, t, v in kvs:
        head += gstr(k) + struct.pack("<I", t) + gval(t, v)
    off = 0
    data = b""
    for name, ne, gt, raw in tensors:
        head += gstr(name) + struct.pack("<I", len(ne)) + struct.pack("<%dQ" % len(ne), *ne)
        head += struct.pack("<IQ", gt, off)
        pad = (-len(raw)) % align
        data += raw + b"\0" * pad
        off += len(raw) + pad
    head += b"\0" * ((-len(head)) % align)
    return head + data


def make_gguf(tmp, models):
    for name, src in models.items():
        for dtype in ("f32", "f16", "bf16"):
            if name == "tiny" and dtype == "f32":
                continue  # over the size budget with its 512-token vocabulary
            p = os.path.join(tmp, "%s-%s.gguf" % (name, dtype))
            run("convert", "--model", src, "--tokenizer", TOK, "--out", p, "--dtype", dtype)
            with open(p, "rb") as f:
                data = f.read()
            out("model_gguf", os.path.basename(p), data)
            if len(data) <= 16384:
                out("gguf", os.path.basename(p), data)
    # one small model of each architecture variant (tests/tools/synth.c)
    synth = os.path.join(os.path.dirname(BIN), "tools", "prefixd-synth")
    common = ["--dim", "8", "--hidden", "12", "--layers", "1", "--heads", "2",
              "--kv-heads", "1", "--vocab-size", "260", "--ctx", "16"]
    for name, extra in [("qwen2", ["--arch", "qwen2", "--tied"]),
                        ("qwen3", ["--arch", "qwen3", "--head-dim", "6"]),
                        ("llama3", ["--arch", "llama", "--rope-scaling", "llama3"]),
                        ("linear", ["--arch", "llama", "--rope-scaling", "linear", "--biases",
                                    "--sliding-window", "8"]),
                        ("phi3", ["--arch", "phi3", "--sliding-window", "8"])]:
        p = os.path.join(tmp, "synth-%s.gguf" % name)
        r = subprocess.run([synth, *common, *extra, "--out", p], stderr=subprocess.PIPE)
        if r.returncode != 0:
            sys.exit("%s: %s" % (synth, r.stderr.decode()))
        with open(p, "rb") as f:
            out("model_gguf", os.path.basename(p), f.read())
    with open(os.path.join(tmp, "vocab3-f16.gguf"), "rb") as f:
        small = f.read()
    out("model_gguf", "vocab3-truncated.gguf", small[: len(small) * 2 // 3])
    out("gguf", "vocab3-truncated.gguf", small[: len(small) * 2 // 3])

    every_type = [
        ("general.architecture", STR, "llama"), ("u8", U8, 7), ("i8", I8, -7),
        ("u16", U16, 700), ("i16", I16, -700), ("u32", U32, 70000), ("i32", I32, -70000),
        ("f32", F32T, 1.5), ("bool", BOOL, 1), ("u64", U64, 1 << 40), ("i64", I64, -(1 << 40)),
        ("f64", F64, -2.25), ("general.alignment", U32, 64),
        ("arr.i32", ARR, (I32, [1, -2, 3])), ("arr.str", ARR, (STR, ["a", "", "\u2581b"])),
        ("arr.nested", ARR, (ARR, [(U8, [1, 2]), (U8, [])])), ("arr.empty", ARR, (F32T, [])),
    ]
    out("gguf", "every-kv-type.gguf", gguf(every_type, [], align=64))
    q8 = struct.pack("<e", 0.5) + bytes(range(32))  # one Q8_0 block: f16 scale + 32 int8
    q4 = struct.pack("<e", 0.25) + bytes(range(16))  # one Q4_0 block
    tensors = [("f32.vec", [4], 0, f32([1, 2, 3, 4])),
               ("f16.mat", [2, 3], 1, struct.pack("<6e", 1, 2, 3, 4, 5, 6)),
               ("q8_0", [32], 8, q8), ("q4_0", [32, 1, 1, 1], 2, q4),
               ("bf16", [2], 30, b"\x80\x3f\x00\x40")]
    out("gguf", "tensors.gguf", gguf([("general.architecture", STR, "llama")], tensors))
    out("gguf", "v2.gguf", gguf([("k", U32, 1)], [("t", [2], 0, f32([1, 2]))], version=2))
    out("gguf", "header-only.gguf", gguf([], []))
    out("gguf", "bad-version.gguf", gguf([("k", U8, 1)], [], version=4))
    out("gguf", "huge-count.gguf", b"GGUF" + struct.pack("<IQQ", 3, 1 << 62, 1 << 62))
    out("gguf", "dup-key.gguf", gguf([("k", U8, 1), ("k", U8, 2)], []))
    out("gguf", "bad-offset.gguf",
        gguf([], [("t", [2], 0, f32([1, 2]))])[:-4])
    out("model_gguf", "no-weights.gguf", gguf([("general.architecture", STR, "llama")], []))
    make_quantized(tmp)
    out("model_gguf", "llama2c-tiny.bin", llama2c(4, 8, 2, 2, 2, 3, 8, seed=3))


def patch_type(data, tensor, new_type):
    """data with the ggml type of `tensor` (a 2-D tensor) changed to new_type."""
    at = data.index(tensor.encode()) + len(tensor) + 4 + 16
    return data[:at] + struct.pack("<I", new_type) + data[at + 4:]


def make_quantized(tmp):
    # a model whose rows of 32 take every 32-element block type (K-quants need rows of 256,
    # over the size budget for a whole model: their blocks are in quant-blocks.gguf)
    src = os.path.join(tmp, "dim32.bin")
    with open(src, "wb") as f:
        f.write(llama2c(32, 64, 1, 2, 1, 3, 8, seed=5))
    for t in ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k_m"):
        p = os.path.join(tmp, "dim32-%s.gguf" % t)
        run("quantize", src, p, "--type", t, "--pure", "--tokenizer", TOK)
        with open(p, "rb") as f:
            data = f.read()
        out("model_gguf", os.path.basename(p), data)
        if t == "q8_0":
            out("gguf", os.path.basename(p), data)
            # a matrix of a type prefixd cannot load, a quantised norm, a wrong block multiple
            out("model_gguf", "dim32-iq4_nl.gguf", patch_type(data, "blk.0.attn_q.weight", 20))
            out("model_gguf", "dim32-q8_k.gguf", patch_type(data, "blk.0.ffn_up.weight", 15))
            out("model_gguf", "dim32-q4_k-rows.gguf", patch_type(data, "blk.0.attn_k.weight", 12))
            out("model_gguf", "dim32-truncated.gguf", data[: len(data) - 700])
    # one block of every weight type (and the activation formats, and two it refuses)
    blocks = [("q4_1", 3, 20), ("q5_0", 6, 22), ("q5_1", 7, 24), ("q8_1", 9, 36), ("q2_k", 10, 84),
              ("q3_k", 11, 110), ("q4_k", 12, 144), ("q5_k", 13, 176), ("q6_k", 14, 210),
              ("q8_k", 15, 292), ("iq4_nl", 20, 18), ("tq2_0", 35, 66)]
    tensors = []
    for name, t, nbytes in blocks:
        n = 32 if nbytes in (20, 22, 24, 36, 18) else 256
        raw = bytes((i * 37 + t) % 251 for i in range(nbytes))
        tensors.append((name, [n], t, raw))
    out("gguf", "quant-blocks.gguf", gguf([("general.architecture", STR, "llama")], tensors))


# ---- safetensors, prefixes and PEFT adapters ---------------------------------------------------

ST_SIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2,
           "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}


def safetensors(tensors, meta=None, pad=True):
    """tensors: [(name, dtype, shape, raw bytes)]."""
    hdr = {}
    if meta is not None:
        hdr["__metadata__"] = meta
    off = 0
    for name, dtype, shape, raw in tensors:
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    h = json.dumps(hdr, separators=(",", ":")).encode()
    if pad:
        h += b" " * ((-len(h)) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(t[3] for t in tensors)


def make_safetensors():
    every = []
    for i, (dt, size) in enumerate(sorted(ST_SIZE.items())):
        every.append(("t.%s" % dt, dt, [2, 1], bytes((i + k) % 256 for k in range(2 * size))))
    out("safetensors", "every-dtype.safetensors", safetensors(every, {"format": "pt"}))
    out("safetensors", "scalar-and-empty.safetensors",
        safetensors([("scalar", "F32", [], f32([3.5])), ("empty", "F16", [0, 4], b""),
                     ("unicode \u00e9\u2581", "BF16", [1], b"\x80\x3f")]))
    out("safetensors", "f32-matrix.safetensors",
        safetensors([("keys", "F32", [2, 3], f32(floats(6, 9)))], {"a": "b", "c": ""}))
    out("safetensors", "no-tensors.safetensors", safetensors([], {"only": "meta"}))
    out("safetensors", "empty-header.safetensors", struct.pack("<Q", 2) + b"{}")
    out("safetensors", "huge-header.safetensors", struct.pack("<Q", 1 << 60) + b"{}")
    out("safetensors", "bad-json.safetensors", struct.pack("<Q", 9) + b'{"a": [1,')
    good = safetensors([("x", "F32", [2], f32([1, 2]))])
    out("safetensors", "truncated.safetensors", good[:-3])
    out("safetensors", "wrong-size.safetensors",
        safetensors([("x", "F32", [3], f32([1, 2]))]))
    # overlapping tensors, offsets written by hand
    h = json.dumps({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                    "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}).encode()
    out("safetensors", "overlap.safetensors", struct.pack("<Q", len(h)) + h + bytes(6))


def make_prefixes(tmp):
    d = os.path.join(tmp, "reg")
    for task, text, extra in [("once", "Once upon a time", []), ("lily", "Lily", ["--f16"]),
                              ("two", "Tom and Sue went to the park.", [])]:
        run("prefix", "from-prompt", "--model", MODEL, "--tokenizer", TOK, "--task", task,
            "--text", text, "--out", d, *extra)
        with open(os.path.join(d, task + ".safetensors"), "rb") as f:
            data = f.read()
        out("prefix", task + ".safetensors", data)
        if task == "lily":
            out("safetensors", "prefix-" + task + ".safetensors", data)
    with open(os.path.join(d, "once.safetensors"), "rb") as f:
        good = f.read()
    n = struct.unpack("<Q", good[:8])[0]
    hdr = json.loads(good[8:8 + n])
    body = good[8 + n:]

    def variant(name, edit):
        h = json.loads(json.dumps(hdr))
        edit(h)
        raw = json.dumps(h, separators=(",", ":")).encode()
        raw += b" " * ((-len(raw)) % 8)
        out("prefix", name, struct.pack("<Q", len(raw)) + raw + body)

    variant("wrong-fingerprint.safetensors",
            lambda h: h["__metadata__"].update(base_fingerprint="0123456789abcdef"))
    variant("wrong-format.safetensors",
            lambda h: h["__metadata__"].update(format="prefixd.prefix/2"))
    variant("bad-task.safetensors", lambda h: h["__metadata__"].update(task="../etc"))
    variant("no-metadata.safetensors", lambda h: h.pop("__metadata__"))
    out("prefix", "truncated.safetensors", good[: len(good) - 100])
    nan = bytearray(good)
    nan[8 + n:8 + n + 4] = struct.pack("<f", float("nan"))
    out("prefix", "nan.safetensors", bytes(nan))


def make_peft():
    # stories260K: 5 layers, dim 64, 8 heads, 4 kv heads, kv_dim 32
    width = 2 * 5 * 32

    def cfg(**kw):
        c = {"peft_type": "PREFIX_TUNING", "task_type": "CAUSAL_LM",
             "base_model_name_or_path": "stories260K", "num_virtual_tokens": 2,
             "num_layers": 5, "token_dim": 32, "num_attention_heads": 4,
             "num_transformer_submodules": 1, "inference_mode": True}
        c.update(kw)
        return json.dumps(c).encode()

    def adapter(p, name="prompt_embeddings", dtype="F32", w=width):
        if dtype == "F32":
            raw = f32(floats(p * w, p))
        else:
            raw = struct.pack("<%de" % (p * w), *floats(p * w, p))
        return safetensors([(name, dtype, [p, w], raw)])

    out("peft", "gqa-config-only.json", cfg())
    out("peft", "classic-config-only.json",
        cfg(token_dim=64, num_attention_heads=8, num_key_value_heads=4, prefix_projection=False))
    out("peft", "gqa-p3-f16", cfg(num_virtual_tokens=3) + PEFT_SEP + adapter(3, dtype="F16"))
    out("peft", "encoder-name",
        cfg(token_dim=64, num_attention_heads=8) + PEFT_SEP +
        adapter(2, name="base_model.prompt_encoder.default.embedding.weight"))
    out("peft", "lora.json", cfg(peft_type="LORA"))
    out("peft", "wrong-layers.json", cfg(num_layers=4))
    out("peft", "wrong-width", cfg() + PEFT_SEP + adapter(2, w=2 * 5 * 64))
    out("peft", "not-json", b"{\"peft_type\": \"PREFIX_TUNING\", " + PEFT_SEP + adapter(2))
    out("peft", "too-many-tokens.json", cfg(num_virtual_tokens=600))


# ---- text inputs ----------------------------------------------------------------------------


def make_completion():
    bodies = [
        {"model": "stories260K", "prompt": "Once upon a time", "max_tokens": 8},
        {"model": "story", "prompt": ["Lily", "Tom"], "n": 2, "temperature": 0.7, "top_p": 0.9,
         "top_k": 40, "seed": 7, "stop": ["\n", "."], "logprobs": 2},
        {"model": "stories260K", "prompt": [1, 400, 30, 2], "echo": True, "stream": True,
         "stream_options": {"include_usage": True}},
        {"model": "sun", "prompt": [[1, 2, 3], [5]], "best_of": 1, "user": "u",
         "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}, "suffix": ""},
        {"model": "stories260K", "prompt": "", "max_tokens": 500},
        {"model": "stories260K", "prompt": "x", "max_tokens": 0, "n": 99},
        {"model": "abc", "prompt": "\u00e9t\u00e9 \U0001F642", "stop": "end", "logprobs": False},
        {"prompt": "no model"},
        {"model": 3, "prompt": {"a": 1}},
        {"model": "stories260K", "prompt": [1, 99999], "temperature": "hot"},
        {"model": "stories260K", "prompt": "a", "echo": True, "logprobs": 1},
    ]
    for i, b in enumerate(bodies):
        out("completion", "body-%02d.json" % i, json.dumps(b))
    out("completion", "not-object.json", "[1, 2]")
    out("completion", "bad-json.json", "{\"model\": ")


def make_dataset():
    lines = []
    for name in ("dragon.train.jsonl", "moral.valid.jsonl"):
        p = os.path.join("tests/data/train", name)
        if os.path.exists(p):
            with open(p, "rb") as f:
                lines.append(b"".join(f.readlines()[:3]))
    for i, chunk in enumerate(lines):
        out("dataset", "real-%d.jsonl" % i, chunk)
    out("dataset", "prompt-completion.jsonl",
        '{"prompt": "Once upon a time", "completion": " there was a cat."}\n'
        '\n'
        '{"text": "Lily and Ben were friends."}\r\n'
        '{"prompt": "", "completion": "x", "extra": [1, 2]}')
    out("dataset", "bad-lines.jsonl",
        '{"prompt": "a"}\n[1]\n{"text": ""}\n{"text": 3}\nnot json\n'
        '{"text": "a", "prompt": "b", "completion": "c"}\n'
        '{"prompt": "The cat", "completion": "s"}\n')
    out("dataset", "bom-utf8.jsonl",
        b'\xef\xbb\xbf{"text": "\xc3\xa9t\xc3\xa9 \xf0\x9f\x99\x82"}\n{"text": "\\u0000 nul"}\n')
    out("dataset", "long.jsonl", json.dumps({"text": "word " * 700}) + "\n")


def make_multipart():
    def body(boundary, parts, close=True):
        b = b"preamble\r\n"
        for headers, data in parts:
            b += b"--" + boundary + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"
            b += data + b"\r\n"
        return b + (b"--" + boundary + b"--\r\nepilogue" if close else b"")

    ct = b"multipart/form-data; boundary=XyZ123\n"
    file_part = ([b'Content-Disposition: form-data; name="file"; filename="train.jsonl"',
                  b"Content-Type: application/jsonl"], b'{"text": "hi"}\n')
    purpose = ([b'Content-Disposition: form-data; name="purpose"'], b"fine-tune")
    out("multipart", "openai-upload", ct + body(b"XyZ123", [purpose, file_part]))
    out("multipart", "quoted-boundary",
        b'Multipart/Form-Data; charset=utf-8; boundary="a b:c"\n' +
        body(b"a b:c", [([b'content-disposition: form-data; name=file; filename="x\\"y.txt"'],
                         b"--a b:c not a delimiter\r\n")]))
    out("multipart", "no-close", ct + body(b"XyZ123", [purpose], close=False))
    out("multipart", "bare-lf", ct + body(b"XyZ123", [purpose]).replace(b"\r\n", b"\n"))
    out("multipart", "not-multipart", b"application/json\n{}")
    out("multipart", "fixed-boundary", b"text/plain\n" + body(b"fuzz", [file_part, purpose]))
    out("multipart", "empty-body", ct)


def make_tokenizer():
    texts = [b"", b"Once upon a time, there was a little girl named Lily.",
             " \u00e9t\u00e9 \u2581 \U0001F642 \u4e2d\u6587".encode(),
             b"\xff\xfe\x80\xc3(\xe2\x82\x00\x01\t\n  double  spaces ",
             b"<0x41><s></s><unk>", b" leading space", b"a" * 300]
    for i, t in enumerate(texts):
        out("tokenizer", "text-%d" % i, t)
    with open(TOK, "rb") as f:
        tok = f.read()
    out("tokenizer_load", "tok512-as-256", bytes([253]) + tok)
    out("tokenizer_load", "tok512-as-3", bytes([0]) + tok)
    out("tokenizer_load", "tok512-as-258-truncated", bytes([255]) + tok[:1000])
    small = struct.pack("<i", 4)
    for score, piece in [(0.0, b"<unk>"), (0.0, b"<s>"), (0.0, b"</s>"), (-1.0, b" a"),
                         (-2.0, b"<0x62>"), (-0.5, b"ab"), (-3.0, b"\xe2\x96\x81")]:
        small += struct.pack("<fi", score, len(piece)) + piece
    out("tokenizer_load", "handmade-7", bytes([4]) + small)
    out("tokenizer_load", "bad-length", bytes([0]) + struct.pack("<ifi", 4, 0.0, -5))
    out("tokenizer_load", "empty", b"\x00")


def make_tokenizer_bpe():
    """Vocabulary byte (gpt-2, deepseek-llm, starcoder, falcon, phi-3), flags
    byte, text."""
    texts = [b"Hello world! I'm 12345 years old.\n\n\tdef f(x): return x",
             " \u00e9t\u00e9 \U0001F999 \u4e2d\u6587\u3002 \u0420\u0443\u0441".encode(),
             b"<|endoftext|>text<|endoftext|><s></s><unk>", b"\xff\xfe\x80\xc3(\xe2\x82\x00 bad",
             b"   \r\n   \n" * 4, b"a" * 200]
    for v in range(5):
        for f in range(4):
            t = texts[(v + f) % len(texts)]
            out("tokenizer_bpe", "v%d-f%d" % (v, f), bytes([v, f]) + t)


def make_tokenizer_gguf():
    """Small vocab-only GGUFs (tests/tools/vocab_from_hf.py's writer)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
    import vocab_from_hf as vh

    def gguf(kvs):
        return struct.pack("<IIQQ", vh.GGUF_MAGIC, 3, 0, len(kvs)) + b"".join(kvs)

    bpe_tokens = ["a", "b", "ab", "\u0120", "\u0120a", "<|im_end|>", "<think>", "<|endoftext|>"]
    bpe_types = [1, 1, 1, 1, 1, 3, 4, 3]
    base = [vh.kv_str("tokenizer.ggml.model", "gpt2"),
            vh.kv_arr_str("tokenizer.ggml.tokens", bpe_tokens),
            vh.kv_arr_i32("tokenizer.ggml.token_type", bpe_types),
            vh.kv_arr_str("tokenizer.ggml.merges", ["a b", "\u0120 a"]),
            vh.kv_u32("tokenizer.ggml.bos_token_id", 7), vh.kv_u32("tokenizer.ggml.eos_token_id", 5),
            vh.kv_bool("tokenizer.ggml.add_bos_token", True),
            vh.kv_str("tokenizer.chat_template", "{{ messages }}")]
    for pre in ("gpt-2", "llama-bpe", "qwen2", "deepseek-llm", "falcon", "tekken", "unknown-pre"):
        out("tokenizer_gguf", "bpe-" + pre, gguf(base + [vh.kv_str("tokenizer.ggml.pre", pre)]))
    out("tokenizer_gguf", "bpe-no-pre", gguf(base))
    out("tokenizer_gguf", "bpe-bad-merge", gguf(base[:3] + [vh.kv_arr_str("tokenizer.ggml.merges",
                                                                          ["ab"])]))
    out("tokenizer_gguf", "bpe-no-merges", gguf(base[:3]))
    spm_tokens = ["<unk>", "<s>", "</s>", "<0x41>", "\u2581", "\u2581a", "a", "<|end|>"]
    spm = [vh.kv_str("tokenizer.ggml.model", "llama"),
           vh.kv_arr_str("tokenizer.ggml.tokens", spm_tokens),
           vh.kv(  "tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 8) +
                   struct.pack("<8f", 0, 0, 0, 0, -1, -2, -3, 0)),
           vh.kv_arr_i32("tokenizer.ggml.token_type", [2, 3, 3, 6, 1, 1, 1, 4]),
           vh.kv_bool("tokenizer.ggml.add_space_prefix", False)]
    out("tokenizer_gguf", "spm", gguf(spm))
    out("tokenizer_gguf", "bert", gguf([vh.kv_str("tokenizer.ggml.model", "bert")] + spm[1:2]))


def main():
    if os.path.isdir(CORPUS):
        shutil.rmtree(CORPUS)
    with tempfile.TemporaryDirectory() as tmp:
        models = make_llama2c(tmp)
        make_gguf(tmp, models)
        make_safetensors()
        make_prefixes(tmp)
    make_peft()
    make_completion()
    make_dataset()
    make_multipart()
    make_tokenizer()
    make_tokenizer_bpe()
    make_tokenizer_gguf()
    total = 0
    for d, _, files in os.walk(CORPUS):
        total += sum(os.path.getsize(os.path.join(d, f)) for f in files)
    print("seeds: %d bytes in %s" % (total, CORPUS))


if __name__ == "__main__":
    main()
