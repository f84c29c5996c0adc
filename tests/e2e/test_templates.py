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
