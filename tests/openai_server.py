"""A real OpenAI-compatible server for the tests: ``transformers serve`` on 127.0.0.1, serving a copy of the tiny
Llama of conftest made into a chat model (a chat template added, and room for long prompts: Llama's rotary
positions need no retraining for that)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def chat_model(src: Path, dst: Path) -> Path:
    """A copy of the tiny model at ``src`` with a chat template and 4096 positions."""
    shutil.copytree(src, dst)
    (dst / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["max_position_embeddings"] = 4096
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def transformers_serve(model: Path, log: Path, timeout: float = 240.0):
    """Run ``transformers serve <model>`` on a free port of 127.0.0.1; yields its base URL (``.../v1``) once
    ``/health`` answers, and stops the server afterwards."""
    port = free_port()
    code = "import sys; from transformers.cli.transformers import main; sys.argv[0] = 'transformers'; sys.exit(main())"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", code, "serve", str(model), "--host", "127.0.0.1", "--port",
                                 str(port), "--device", "cpu", "--log-level", "warning"], stdout=out,
                                stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited ({proc.returncode}): {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"transformers serve did not start in {timeout:.0f} s: {log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
