"""Prompt scoring over POST /v1/completions (echo + logprobs, what
lm-evaluation-harness's local-completions sends): OpenAI's legacy shape, and
the prompt's token_logprobs equal the logprobs the engine gave the same
tokens when it generated them (decode path vs the prefill path of scoring,
within 1e-5). The scheduler's unit test compares the same scores with the
engine stepped one token at a time (tests/unit/test_scheduler.c)."""
import json

import pytest

from server_util import Server
from test_badreq import shipped_registry

BASE = "stories260K"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("scoring"), str(shipped_registry(
        tmp_path_factory.mktemp("scoring-reg"))))
    yield s
    s.stop()


def check_shape(lp, n_prompt, n_gen, top):
    n = n_prompt + n_gen
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    for k in lp:
        assert len(lp[k]) == n, (k, len(lp[k]), n)
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(isinstance(x, float) and x <= 0 for x in lp["token_logprobs"][1:])
    offs = lp["text_offset"]
    assert offs == sorted(offs) and offs[0] == 0
    for i in range(1, n):
        t = lp["top_logprobs"][i]
        if top == 0:
            assert t == {} or t is None
        else:
            assert 1 <= len(t) <= top
            # the chosen token is listed when it is at least as likely as the last listed
            if lp["token_logprobs"][i] >= min(t.values()) + 1e-6:
                assert lp["tokens"][i] in t


def test_scoring_only(srv):
    r = srv.complete(model=BASE, prompt="Once upon a time, there was a dog.", max_tokens=0,
                     echo=True, logprobs=3)
    ch = r["choices"][0]
    assert ch["text"] == "Once upon a time, there was a dog."
    assert ch["finish_reason"] == "length"
    assert r["usage"]["completion_tokens"] == 0
    n = r["usage"]["prompt_tokens"]
    check_shape(ch["logprobs"], n, 0, 3)
    assert "".join(ch["logprobs"]["tokens"]) == ch["text"]


def test_scores_equal_generation_logprobs(srv):
    # the engine generates 12 tokens greedily, reporting each one's logprob (decode path)
    g = srv.complete(model=BASE, prompt="Once upon a time", max_tokens=12, temperature=0,
                     echo=True, logprobs=1)["choices"][0]
    lp = g["logprobs"]
    n_gen = len([x for x in lp["text_offset"] if x >= len("Once upon a time")])
    n_prompt = len(lp["tokens"]) - n_gen
    check_shape(lp, n_prompt, n_gen, 1)
    # then the same text is scored as a prompt (prefill path)
    s = srv.complete(model=BASE, prompt=g["text"], max_tokens=0, echo=True,
                     logprobs=1)["choices"][0]["logprobs"]
    if s["tokens"] != lp["tokens"]:
        pytest.fail(f"re-tokenization differs: {s['tokens']} vs {lp['tokens']}")
    for i in range(1, len(lp["tokens"])):
        assert abs(s["token_logprobs"][i] - lp["token_logprobs"][i]) < 1e-5, \
            (i, s["token_logprobs"][i], lp["token_logprobs"][i])


def test_token_prompt_as_lm_eval_sends_it(srv):
    # lm-evaluation-harness: token ids, echo, max_tokens 0 (or 1), logprobs 1
    ids = [1, 403, 407, 261, 378, 275, 260]
    for mt in (0, 1):
        r = srv.complete(model=BASE, prompt=ids, max_tokens=mt, echo=True, logprobs=1,
                         temperature=0)
        lp = r["choices"][0]["logprobs"]
        check_shape(lp, len(ids), mt, 1)
        assert r["usage"]["prompt_tokens"] == len(ids)
    # a batch of prompts: one choice each, in order
    r = srv.complete(model=BASE, prompt=[ids, ids[:4]], max_tokens=0, echo=True, logprobs=0)
    assert [len(c["logprobs"]["tokens"]) for c in r["choices"]] == [len(ids), 4]
    assert r["choices"][0]["logprobs"]["token_logprobs"][:4] == \
        r["choices"][1]["logprobs"]["token_logprobs"]


def test_streamed_scoring_equals_whole(srv):
    params = dict(model=BASE, prompt="The little dog ran", max_tokens=5, temperature=0,
                  echo=True, logprobs=2)
    whole = srv.complete(**params)["choices"][0]
    _, events = srv.stream(**params)
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == whole["text"]
    merged = {k: [] for k in whole["logprobs"]}
    for c in chunks:
        for k, v in c["choices"][0]["logprobs"].items():
            merged[k] += v
    assert merged == whole["logprobs"]


def test_scoring_with_a_task(srv):
    r = srv.complete(model="dragon", prompt="The dragon", max_tokens=0, echo=True, logprobs=1)
    lp = r["choices"][0]["logprobs"]
    check_shape(lp, r["usage"]["prompt_tokens"], 0, 1)
    base = srv.complete(model=BASE, prompt="The dragon", max_tokens=0, echo=True,
                        logprobs=1)["choices"][0]["logprobs"]
    # the task's prefix changes what the model expects
    assert lp["token_logprobs"][-1] != base["token_logprobs"][-1]


def test_scoring_errors(srv):
    r = srv.request("POST", "/v1/completions", {"model": BASE, "prompt": "a", "max_tokens": 0})
    assert r.status == 400 and r.json()["error"]["param"] == "max_tokens"
