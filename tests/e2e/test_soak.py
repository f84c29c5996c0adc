"""The bounded soak (tests/e2e/soak.py) in a short version: a mixed load on
the real `prefixd serve` on 127.0.0.1 for PREFIXD_SOAK_SECONDS (60 by
default; `make soak` runs 600), passing only with no unexpected 5xx, RSS and
open file descriptors flat after warm-up, and a clean exit."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SECONDS = float(os.environ.get("PREFIXD_SOAK_SECONDS", "60"))


def test_soak():
    p = subprocess.run([sys.executable, os.path.join(HERE, "soak.py"), "--seconds", str(SECONDS)],
                       capture_output=True, text=True, timeout=SECONDS + 300)
    print(p.stdout)
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
