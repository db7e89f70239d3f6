"""The `molora` program's exit: a launched worker leaves without interpreter teardown, with main()'s code."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import atexit, sys
atexit.register(lambda: print("TEARDOWN", flush=True))
from molora import cli
sys.argv = ["molora", "convert", {src!r}, {dst!r}]
cli.console()
"""


@pytest.mark.parametrize("world_size, teardown", [(None, True), ("1", True), ("2", False)])
def test_console_exit(tmp_path, world_size, teardown):
    env = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"}
    if world_size is not None:
        env["WORLD_SIZE"] = world_size
    code = SCRIPT.format(src=str(tmp_path / "nowhere"), dst=str(tmp_path / "out"))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr  # main()'s code either way
    assert "nowhere" in r.stderr  # the error was printed (and flushed) before the exit
    assert ("TEARDOWN" in r.stdout) == teardown
