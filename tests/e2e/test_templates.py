"""Chat templates rendered by prefixd equal @huggingface/jinja's output byte
for byte: every template in tests/data/templates/ x every conversation of
conversations.json x add_generation_prompt on and off. The reference renders
in node (render_templates.mjs); prefixd renders each pair through
`prefixd template`, and a sample through POST /apply-template. A pair where
the reference raises must fail in prefixd too."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import BIN, ROOT

TEMPLATES = os.path.join(ROOT, "tests/data/templates")
E2E = os.path.join(ROOT, "tests/e2e")
NOW = "1722000000"  # render_templates.mjs freezes the clock at this second
ENV = dict(os.environ, TZ="UTC")


@pytest.fixture(scope="module")
def reference():
    if not shutil.which("node") or not os.path.isdir(os.path.join(E2E, "node_modules/@huggingface/jinja")):
        pytest.skip("node and @huggingface/jinja (make deps) are needed for the reference")
    p = subprocess.run(["node", "render_templates.mjs", TEMPLATES], cwd=E2E, env=ENV,
                       capture_output=True, text=True, timeout=120, check=True)
    return json.loads(p.stdout)


@pytest.fixture(scope="module")
def conversations():
    with open(os.path.join(TEMPLATES, "conversations.json")) as f:
        return json.load(f)


def render(tmp_path, template, conv, spec, agp):
    body = {"messages": spec["conversations"][conv]["messages"], "add_generation_prompt": agp}
    if spec["conversations"][conv].get("tools"):
        body["tools"] = spec["tools"]
    path = tmp_path / "body.json"
    path.write_text(json.dumps(body))
    return subprocess.run([BIN, "template", "--template", os.path.join(TEMPLATES, template),
                           "--messages", str(path), "--bos", "<|bos|>", "--eos", "<|eos|>",
                           "--now", NOW], capture_output=True, env=ENV, timeout=30)


def test_every_template_matches_the_reference(reference, conversations, tmp_path):
    matched, raised, mismatches = 0, 0, []
    for key, ref in sorted(reference.items()):
        template, conv, agp = key.split("|")
        p = render(tmp_path, template, conv, conversations, agp == "true")
        if "error" in ref:
            if p.returncode == 0:
                mismatches.append(f"{key}: the reference raises ({ref['error']}), prefixd rendered")
            else:
                raised += 1
            continue
        if p.returncode != 0:
            mismatches.append(f"{key}: prefixd failed: {p.stderr.decode()[:300]}")
        elif p.stdout != ref["prompt"].encode():
            out, want = p.stdout.decode(errors="replace"), ref["prompt"]
            i = next((k for k in range(min(len(out), len(want))) if out[k] != want[k]), min(len(out), len(want)))
            mismatches.append(f"{key}: differs at {i}: got {out[max(0, i - 40):i + 40]!r}, "
                              f"want {want[max(0, i - 40):i + 40]!r}")
        else:
            matched += 1
    print(f"\n{matched} (template x conversation) renderings match byte for byte, "
          f"{raised} raise in both, of {len(reference)}")
    assert not mismatches, "\n".join(mismatches)
    templates = {k.split("|")[0] for k in reference}
    assert len(templates) >= 18 and matched >= 200


def test_apply_template_route(reference, conversations, tmp_path):
    """POST /apply-template gives the reference's prompt (the request's
    "chat_template" carrying the source); the configured chat_template is
    the default; bad input is a 400 naming the field."""
    from server_util import Server

    registry = tmp_path / "registry"
    registry.mkdir()
    llama = os.path.join(TEMPLATES, "meta-llama-Llama-3.2-3B-Instruct.jinja")
    with open(llama) as f:
        llama_src = f.read()
    with Server(tmp_path, str(registry), config={"chat_template": "llama3"}) as s:
        checked = 0
        for conv in ("system_user", "multi_turn", "content_parts", "tool_call_and_result"):
            for agp in (True, False):
                ref = reference[f"meta-llama-Llama-3.2-3B-Instruct.jinja|{conv}|{str(agp).lower()}"]
                c = conversations["conversations"][conv]
                body = {"messages": c["messages"], "add_generation_prompt": agp,
                        "chat_template": llama_src}
                if c.get("tools"):
                    body["tools"] = conversations["tools"]
                r = s.request("POST", "/apply-template", body)
                assert r.status == 200, r.body
                # the server's clock is real: compare with the date line masked;
                # the BOS text is the model's (tok512's piece), not the reference's
                got = r.json()["prompt"]
                got = got[got.index("<|start_header_id|>"):]
                want = ref["prompt"].replace("<|bos|>", "", 1)
                mask = lambda t: "\n".join(l for l in t.split("\n") if not l.startswith("Today Date:"))
                assert mask(got) == mask(want), conv
                checked += 1
        assert checked == 8

        # the configured built-in (llama3), with the model's BOS text
        r = s.request("POST", "/apply-template", {"messages": [{"role": "user", "content": " hi "}]})
        assert r.status == 200
        assert "<s>" in r.json()["prompt"]
        assert r.json()["prompt"].endswith("<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                                      "<|start_header_id|>assistant<|end_header_id|>\n\n")
        # a built-in by name in the request
        r = s.request("POST", "/apply-template", {"messages": [{"role": "user", "content": "hi"}],
                                                  "add_generation_prompt": False,
                                                  "chat_template": "chatml"})
        assert r.json()["prompt"] == "<|im_start|>user\nhi<|im_end|>\n"

        for body, param, words in [
            ({"messages": []}, "messages", "non-empty"),
            ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages",
             "image_url"),
            ({"messages": [{"content": "x"}]}, "messages", "role"),
            ({"messages": [{"role": "user", "content": "x"}], "add_generation_prompt": 1},
             "add_generation_prompt", "boolean"),
            ({"messages": [{"role": "user", "content": "x"}], "chat_template": "{% if %}"},
             "messages", "line 1"),
            ({"messages": [{"role": "user", "content": "x"}],
              "chat_template": "{{ raise_exception('no users here') }}"}, "messages", "no users here"),
        ]:
            r = s.request("POST", "/apply-template", body)
            assert r.status == 400, (body, r.body)
            err = r.json()["error"]
            assert err["param"] == param and words in err["message"], err


def test_template_cli_errors(tmp_path):
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for x in messages %}{{ x.content | frobnicate }}{% endfor %}")
    msgs = tmp_path / "m.json"
    msgs.write_text(json.dumps([{"role": "user", "content": "hi"}]))
    p = subprocess.run([BIN, "template", "--template", str(bad), "--messages", str(msgs)],
                       capture_output=True, text=True)
    assert p.returncode == 1
    assert "line 1, column" in p.stderr and "frobnicate" in p.stderr
    p = subprocess.run([BIN, "template", "--template", "nosuch", "--messages", str(msgs)],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "not a built-in name" in p.stderr
    p = subprocess.run([BIN, "template", "--messages", str(msgs), "--no-generation-prompt"],
                       capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout == "<|im_start|>user\nhi<|im_end|>\n"


def test_train_on_chat_data(tmp_path):
    """`prefixd train` takes {"messages"} lines (mixed with prompt/completion
    ones) and refuses a malformed conversation with FILE:LINE."""
    from conftest import MODEL, TOKENIZER

    names = ["Lily", "Ben", "Tim", "Sue", "Max", "Ann"]
    lines = []
    for i, n in enumerate(names):
        lines.append({"messages": [
            {"role": "system", "content": "You tell tiny stories."},
            {"role": "user", "content": f"Tell me about {n}."},
            {"role": "assistant", "content": f"{n} had a red ball.", "weight": i % 2},
            {"role": "user", "content": "And then?"},
            {"role": "assistant", "content": f"{n} played in the park all day."}]})
    lines.append({"prompt": "Once upon a time", "completion": " there was a dog."})
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps(l) for l in lines) + "\n")
    out = tmp_path / "out"
    p = subprocess.run([BIN, "train", "--model", MODEL, "--tokenizer", TOKENIZER, "--data", str(data),
                        "--task", "chatty", "--out", str(out), "--epochs", "1", "--batch-size", "2",
                        "--virtual-tokens", "4", "--threads", "1"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert (out / "chatty.safetensors").stat().st_size > 0

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(lines[0]) + "\n" +
                   json.dumps({"messages": [{"role": "user", "content": "no answer"}]}) + "\n")
    p = subprocess.run([BIN, "train", "--model", MODEL, "--tokenizer", TOKENIZER, "--data", str(bad),
                        "--task", "bad", "--out", str(out), "--epochs", "1"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "bad.jsonl:2:" in p.stderr and "no assistant message" in p.stderr, p.stderr


def test_configured_template_file(tmp_path):
    """chat_template names a file: it is used; one that does not parse
    stops the server at start with the line and column."""
    from server_util import Server

    registry = tmp_path / "registry"
    registry.mkdir()
    good = tmp_path / "mine.jinja"
    good.write_text("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
                    "{% if add_generation_prompt %}[assistant] {% endif %}\n")
    with Server(tmp_path, str(registry), config={"chat_template": str(good)}) as s:
        r = s.request("POST", "/apply-template", {"messages": [{"role": "user", "content": "hi"}]})
        assert r.status == 200 and r.json()["prompt"] == "[user] hi\n[assistant] "
    bad = tmp_path / "bad.jinja"
    bad.write_text("ok\n{% for m in messages %}")
    srv = Server(tmp_path, str(registry), config={"chat_template": str(bad)}, wait=False)
    assert srv.proc.wait(timeout=60) != 0
    srv.log.close()
    assert "chat_template" in srv.logs() and "line 2, column" in srv.logs(), srv.logs()
