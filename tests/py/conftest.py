"""Fixtures: the real switchboard binary and mock backends (the `mockllm` binary) on loopback.

Both binaries come from `cargo build --workspace` (debug profile unless SWITCHBOARD_PROFILE says
otherwise); `.ci/run` builds them before pytest runs.
"""

import json
import os
import subprocess
import tempfile
import threading
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROFILE = os.environ.get("SWITCHBOARD_PROFILE", "debug")
BIN = ROOT / "target" / PROFILE
ADMIN = "py-admin-key"


def _spawn(cmd, env, marker):
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    found = {}
    ready = threading.Event()

    def pump():
        for line in proc.stdout:
            if marker in line and "url" not in found:
                found["url"] = line.strip().split(marker, 1)[1].strip()
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(30) or "url" not in found:
        proc.kill()
        raise RuntimeError(f"{cmd[0]} did not start")
    return proc, found["url"]


@pytest.fixture(scope="session")
def mock_url():
    proc, url = _spawn([str(BIN / "mockllm"), "--port", "0"], dict(os.environ), "listening on ")
    yield url
    proc.kill()


@pytest.fixture(scope="session")
def broker(mock_url):
    data = tempfile.mkdtemp(prefix="switchboard-py-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update(PORT="0", SWITCHBOARD_DATA_DIR=data, SWITCHBOARD_ADMIN_KEY=ADMIN, SWITCHBOARD_DEMO="0", RUST_LOG="warn", SWITCHBOARD_RATE_LIMIT_PER_MIN="0")
    proc, url = _spawn([str(BIN / "switchboard")], env, "switchboard listening on ")
    for model in ["sdk-model", "sdk-tools", "sdk-ollamatools", "sdk-error503"]:
        admin(url, "POST", "/admin/register", {"model_name": model, "endpoint_url": mock_url})
    yield url
    proc.kill()


def admin(base, method, path, body=None):
    req = urllib.request.Request(
        base + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"X-API-Key": ADMIN, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"null")
