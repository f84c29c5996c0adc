"""Shared fixtures for the end-to-end tests: the real prefixd binary, the
shipped model, and temporary directories."""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, os.environ.get("PREFIXD_BIN", "build/prefixd"))
MODEL = os.path.join(ROOT, "models/stories260K/stories260K.bin")
TOKENIZER = os.path.join(ROOT, "models/stories260K/tok512.bin")


def run(*args, check=True, timeout=120, **kw):
    """Runs the prefixd binary; returns the CompletedProcess (text mode)."""
    p = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"prefixd {' '.join(args)} exited {p.returncode}: {p.stderr}")
    return p


@pytest.fixture
def prefixd():
    return run
