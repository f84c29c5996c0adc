"""POST /v1/chat/completions end to end: the official OpenAI Node client's chat
calls (plain, streamed with usage, n > 1, a task, a refused response_format);
greedy chat output equals /v1/completions on the prompt /apply-template
renders; generation stops at the end of the turn; chat errors have OpenAI's
shape. The shipped stories260K has no chat template, so the ChatML built-in
renders the conversation; its <|im_end|> is no token of that vocabulary, so
the end of turn is also a stop string. A Qwen3-shaped random-weight model with
Qwen 3's real vocabulary and chat template (prefixd-synth) checks the path of
the GGUFs people download: the file's own template, special tokens parsed,
<|im_end|> an end-of-generation id."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import BIN, ROOT
from server_util import Server
from test_badreq import shipped_registry

BASE = "stories260K"
MSGS = [{"role": "system", "content": "You tell stories."},
        {"role": "user", "content": "Tell me about a dog."}]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("chat"),
               str(shipped_registry(tmp_path_factory.mktemp("chat-reg"))))
    yield s
    s.stop()


def chat(srv, **params):
    r = srv.request("POST", "/v1/chat/completions", params)
    assert r.status == 200, (r.status, r.body)
    return r.json()


def counts(usage):
    """usage without prompt_tokens_details: cached_tokens depends on what the
    prompt cache holds from earlier requests, not on the request."""
    assert isinstance(usage["prompt_tokens_details"]["cached_tokens"], int)
    return {k: v for k, v in usage.items() if k != "prompt_tokens_details"}


def rendered(srv, messages, generation_prompt=True):
    r = srv.request("POST", "/apply-template", {"messages": messages,
                                                "add_generation_prompt": generation_prompt})
    assert r.status == 200, r.body
    return r.json()["prompt"]


def test_apply_template_is_chatml(srv):
    assert rendered(srv, MSGS) == ("<|im_start|>system\nYou tell stories.<|im_end|>\n"
                                   "<|im_start|>user\nTell me about a dog.<|im_end|>\n"
                                   "<|im_start|>assistant\n")
    assert not rendered(srv, MSGS, False).endswith("assistant\n")


@pytest.mark.parametrize("model", [BASE, "dragon"])
def test_greedy_chat_equals_completion_of_rendered_prompt(srv, model):
    c = chat(srv, model=model, messages=MSGS, max_tokens=24, temperature=0)
    want = srv.complete(model=model, prompt=rendered(srv, MSGS), max_tokens=24, temperature=0,
                        stop=["<|im_end|>"])
    assert c["object"] == "chat.completion" and c["id"].startswith("chatcmpl-")
    assert c["choices"][0]["message"] == {"role": "assistant",
                                          "content": want["choices"][0]["text"]}
    assert c["choices"][0]["finish_reason"] == want["choices"][0]["finish_reason"]
    assert counts(c["usage"]) == counts(want["usage"])


def test_stops_at_end_of_turn(srv):
    # this greedy story ends with the model's end-of-generation token (EOS)
    # before max_tokens: the turn ends there with "stop", exactly where the
    # completion of the rendered prompt ends
    msgs = [{"role": "user", "content": "The end."}]
    c = chat(srv, model=BASE, messages=msgs, max_tokens=460, temperature=0)
    assert c["choices"][0]["finish_reason"] == "stop"
    assert c["usage"]["completion_tokens"] < 460
    want = srv.complete(model=BASE, prompt=rendered(srv, msgs), max_tokens=460, temperature=0)
    assert want["choices"][0]["finish_reason"] == "stop"
    assert want["usage"]["completion_tokens"] == c["usage"]["completion_tokens"]
    # and a stop string ends it too, cut before the string
    text = c["choices"][0]["message"]["content"]
    word = text.split()[3]
    s = chat(srv, model=BASE, messages=msgs, max_tokens=400, temperature=0, stop=[word])
    assert s["choices"][0]["finish_reason"] == "stop"
    assert s["choices"][0]["message"]["content"] == text[:text.index(word)]


def test_stream_equals_whole_and_logprobs(srv):
    params = dict(model=BASE, messages=MSGS, max_tokens=12, temperature=0, logprobs=True,
                  top_logprobs=2)
    whole = chat(srv, **params)
    r = srv.request("POST", "/v1/chat/completions", dict(params, stream=True))
    assert r.status == 200
    events = [e[len("data: "):] for e in r.body.decode().split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    lp = [t for c in chunks if c["choices"][0]["logprobs"]
          for t in c["choices"][0]["logprobs"]["content"]]
    assert lp == whole["choices"][0]["logprobs"]["content"]
    assert len(lp) == whole["usage"]["completion_tokens"]
    for t in lp:
        assert bytes(t["bytes"]).decode("utf-8", "replace") == t["token"] or t["bytes"]
        assert len(t["top_logprobs"]) == 2 and t["logprob"] <= 0


@pytest.mark.parametrize("params,param", [
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages"),
    ({"messages": MSGS, "response_format": {"type": "json_schema"}}, "response_format"),
    ({"messages": MSGS, "top_logprobs": 2}, "top_logprobs"),
    ({"messages": MSGS, "logprobs": True, "top_logprobs": 9}, "top_logprobs"),
    ({"messages": MSGS, "prompt": "x"}, "prompt"),
    ({"messages": MSGS, "n": 0}, "n"),
    ({}, "messages"),
])
def test_chat_errors(srv, params, param):
    r = srv.request("POST", "/v1/chat/completions", dict({"model": BASE}, **params))
    assert r.status == 400, r.body
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error", err


def test_official_client(srv):
    node = shutil.which("node")
    if not node:
        pytest.skip("node is not installed")
    e2e = os.path.join(ROOT, "tests", "e2e")
    env = dict(os.environ, PREFIXD_URL=srv.url, PREFIXD_BASE=BASE, PREFIXD_TASK="dragon")
    p = subprocess.run([node, os.path.join(e2e, "openai_chat.mjs")], capture_output=True,
                       text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    want = chat(srv, model=BASE, messages=MSGS, max_tokens=16, temperature=0)
    content = want["choices"][0]["message"]["content"]
    assert out["plain"]["object"] == "chat.completion"
    assert out["plain"]["message"]["role"] == "assistant"
    assert out["plain"]["message"]["content"] == content
    assert out["stream"] == {"text": content, "role": "assistant",
                             "finish": out["plain"]["finish"], "usage": out["plain"]["usage"]}
    assert [c["index"] for c in out["many"]] == [0, 1, 2]
    assert len({c["content"] for c in out["many"]}) > 1  # sampled choices differ
    task = chat(srv, model="dragon", messages=MSGS, max_tokens=16, temperature=0)
    assert out["task"] == {"model": "dragon", "content": task["choices"][0]["message"]["content"]}
    assert out["task"]["content"] != content  # the prefix changes the answer
    assert out["error"]["status"] == 400 and out["error"]["param"] == "response_format"


# ---- a model with its own chat template and special tokens ----------------------------------

SYNTH = os.path.join(os.path.dirname(BIN), "tools", "prefixd-synth")
QWEN3_VOCAB = os.path.join(os.path.dirname(BIN), "vocab", "qwen3.gguf")
IM_START, IM_END = 151644, 151645  # <|im_start|>, <|im_end|> in Qwen 3's vocabulary


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """A Qwen3-shaped random-weight model carrying Qwen 3's real vocabulary and
    chat template (prefixd-synth copies the vocab GGUF's tokenizer keys)."""
    if not (os.path.exists(SYNTH) and os.path.exists(QWEN3_VOCAB)):
        pytest.skip("build/tools/prefixd-synth and build/vocab/qwen3.gguf: make all vocabs")
    tmp = tmp_path_factory.mktemp("qwen")
    path = str(tmp / "q3.gguf")
    subprocess.run([SYNTH, "--arch", "qwen3", "--vocab", QWEN3_VOCAB, "--dim", "64", "--hidden",
                    "128", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--head-dim", "16",
                    "--ctx", "512", "--seed", "5", "--out", path], check=True,
                   capture_output=True, timeout=120)
    (tmp / "registry").mkdir()
    s = Server(tmp, str(tmp / "registry"), config={"model": path, "tokenizer": None})
    yield s
    s.stop()


def test_gguf_template_and_special_tokens(qwen):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]
    prompt = rendered(qwen, msgs)
    # Qwen 3's own template (not the ChatML fallback: it opens a thinking-free turn the
    # same way, but it renders tools its own way)
    assert prompt == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n" \
                     "<|im_start|>assistant\n"
    tools = [{"type": "function", "function": {"name": "f", "description": "d",
                                               "parameters": {}}}]
    r = qwen.request("POST", "/apply-template", {"messages": msgs, "tools": tools})
    assert "<tools>" in r.json()["prompt"]
    # the markers become their control tokens, and no BOS is added (Qwen adds none)
    ids = qwen.request("POST", "/tokenize", {"content": prompt, "parse_special": True}).json()
    ids = ids["tokens"]
    assert ids.count(IM_END) == 2 and ids.count(IM_START) == 3 and len(ids) == 15
    c = chat(qwen, model="q3", messages=msgs, max_tokens=6, temperature=0)
    assert c["usage"]["prompt_tokens"] == len(ids)
    # greedy chat equals the completion of exactly those token ids
    want = qwen.complete(model="q3", prompt=ids, max_tokens=6, temperature=0)
    assert c["choices"][0]["message"]["content"] == want["choices"][0]["text"]
    assert counts(c["usage"]) == counts(want["usage"])


def test_gguf_end_of_turn_is_an_eog_id(qwen):
    with open(qwen.config_path) as f:
        model = json.load(f)["model"]
    info = subprocess.run([BIN, "inspect", model], capture_output=True, text=True,
                          check=True).stdout
    eog = [int(x) for x in info.split("eog:")[1].splitlines()[0].split()]
    assert IM_END in eog  # the scheduler stops at every EOG id
