#!/usr/bin/env python3
"""vocab_from_hf.py — a vocab-only GGUF from a Hugging Face tokenizer.

Usage:
    vocab_from_hf.py IN_DIR OUT.gguf --pre PRE [--arch ARCH] [--name NAME]
                     [--add-bos auto|yes|no]

IN_DIR holds tokenizer.json (a byte-level BPE model: model.vocab,
model.merges as "a b" strings or [a, b] pairs, added_tokens) and optionally
tokenizer_config.json (bos_token, eos_token, add_bos_token, add_eos_token,
chat_template). OUT.gguf is written as GGUF v3 with no tensors:

    general.architecture   ARCH (default "llama"), general.name NAME
    tokenizer.ggml.model   "gpt2"
    tokenizer.ggml.pre     PRE (e.g. llama-bpe for Llama 3, qwen2 for Qwen 2/3)
    tokenizer.ggml.tokens / token_type / merges
    tokenizer.ggml.bos_token_id, eos_token_id, (padding_token_id)
    tokenizer.ggml.add_bos_token, add_eos_token
    tokenizer.chat_template (when tokenizer_config.json has one)

Token types follow llama.cpp's converter (convert_hf_to_gguf.py): ids with
no token become "[PAD<id>]" UNUSED (5); an added token that is special, or
looks special (<|...|>, <｜...｜>, <pad>, <mask>, <unused...>), is CONTROL
(3); another added token is USER_DEFINED (4); the rest NORMAL (1).
bos: bos_token, else "<|endoftext|>" when present (Qwen); eos: eos_token.
add_bos_token: --add-bos, else tokenizer_config's add_bos_token, else yes
for the llama-bpe family (as llama.cpp defaults it). --arch sets only the
general.architecture string: the file holds no hyper-parameters.

The CLI is stable: tests and the random-weight model builders rely on it.
Written with struct only (no gguf-py, no numpy needed).
"""
import argparse
import json
import os
import struct
import sys

GGUF_MAGIC = 0x46554747
T_U32, T_I32, T_BOOL, T_STRING, T_ARRAY = 4, 5, 7, 8, 9
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


def s_bytes(s):
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype, payload):
    return s_bytes(key) + struct.pack("<I", vtype) + payload


def kv_str(key, s):
    return kv(key, T_STRING, s_bytes(s))


def kv_u32(key, v):
    return kv(key, T_U32, struct.pack("<I", v))


def kv_bool(key, v):
    return kv(key, T_BOOL, struct.pack("<B", 1 if v else 0))


def kv_arr_str(key, items):
    return kv(key, T_ARRAY, struct.pack("<IQ", T_STRING, len(items)) + b"".join(s_bytes(x) for x in items))


def kv_arr_i32(key, items):
    return kv(key, T_ARRAY, struct.pack("<IQ", T_I32, len(items)) + struct.pack("<%di" % len(items), *items))


def looks_special(t):
    return (t in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (t.startswith("<|") and t.endswith("|>"))
            or (t.startswith("<\uff5c") and t.endswith("\uff5c>"))
            or (t.startswith("<unused") and t.endswith(">")))


def token_name(v):
    if isinstance(v, dict):
        return v.get("content")
    return v


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("in_dir")
    ap.add_argument("out")
    ap.add_argument("--pre", required=True)
    ap.add_argument("--arch", default="llama")
    ap.add_argument("--name", default=None)
    ap.add_argument("--add-bos", choices=("auto", "yes", "no"), default="auto")
    a = ap.parse_args()

    with open(os.path.join(a.in_dir, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    cfg = {}
    cpath = os.path.join(a.in_dir, "tokenizer_config.json")
    if os.path.exists(cpath):
        with open(cpath, encoding="utf-8") as f:
            cfg = json.load(f)
    model = tj["model"]
    if model.get("type") != "BPE":
        sys.exit("vocab_from_hf: %s: model type %r, expected BPE" % (a.in_dir, model.get("type")))
    vocab = dict(model["vocab"])
    added = {t["id"]: t for t in tj.get("added_tokens", [])}
    for i, t in added.items():
        vocab[t["content"]] = i
    n = max(vocab.values()) + 1
    rev = {}
    for t, i in vocab.items():
        rev[i] = t
    tokens, types = [], []
    for i in range(n):
        if i not in rev:
            tokens.append("[PAD%d]" % i)
            types.append(UNUSED)
            continue
        t = rev[i]
        tokens.append(t)
        if i in added:
            types.append(CONTROL if added[i].get("special") or looks_special(t) else USER_DEFINED)
        else:
            types.append(NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]

    def tid(name):
        return vocab.get(name) if name is not None else None

    bos = tid(token_name(cfg.get("bos_token")))
    if bos is None:
        bos = tid("<|endoftext|>")
    eos = tid(token_name(cfg.get("eos_token")))
    pad = tid(token_name(cfg.get("pad_token")))
    if a.add_bos != "auto":
        add_bos = a.add_bos == "yes"
    elif "add_bos_token" in cfg:
        add_bos = bool(cfg["add_bos_token"])
    else:
        add_bos = a.pre in ("llama-bpe", "llama3", "llama-v3", "falcon3")

    kvs = [kv_str("general.architecture", a.arch),
           kv_str("general.name", a.name or os.path.basename(os.path.normpath(a.in_dir))),
           kv_str("tokenizer.ggml.model", "gpt2"),
           kv_str("tokenizer.ggml.pre", a.pre),
           kv_arr_str("tokenizer.ggml.tokens", tokens),
           kv_arr_i32("tokenizer.ggml.token_type", types),
           kv_arr_str("tokenizer.ggml.merges", merges)]
    if bos is not None:
        kvs.append(kv_u32("tokenizer.ggml.bos_token_id", bos))
    if eos is not None:
        kvs.append(kv_u32("tokenizer.ggml.eos_token_id", eos))
    if pad is not None:
        kvs.append(kv_u32("tokenizer.ggml.padding_token_id", pad))
    kvs.append(kv_bool("tokenizer.ggml.add_bos_token", add_bos))
    kvs.append(kv_bool("tokenizer.ggml.add_eos_token", bool(cfg.get("add_eos_token", False))))
    if isinstance(cfg.get("chat_template"), str):
        kvs.append(kv_str("tokenizer.chat_template", cfg["chat_template"]))

    body = struct.pack("<IIQQ", GGUF_MAGIC, 3, 0, len(kvs)) + b"".join(kvs)
    tmp = a.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(body)
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
