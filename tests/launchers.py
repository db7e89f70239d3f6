"""Launching multi-process runs from tests: torchrun (``torch.distributed.run``) on this machine,
one node or several "nodes" of one process each that meet on localhost, on a free port picked at
random (tests running at the same time must not share a rendezvous)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port no one listens on now (the OS picks one at random among the free ones)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], *, nproc: int = 1, nnodes: int = 1, node_rank: int = 0, port: int,
             env: dict | None = None) -> subprocess.Popen:
    """``torchrun`` with a static rendezvous at 127.0.0.1:``port`` (``args``: ``-m module ...`` or a
    script and its arguments); stdout and stderr together in ``.stdout``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--node-rank={node_rank}",
           f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1", f"--master-port={port}", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    """Wait for ``proc``; its output, with an assertion error naming the exit code when it failed."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"timed out after {timeout} s:\n{out[-3000:]}") from None
    assert proc.returncode == 0, f"exit code {proc.returncode}:\n{out[-4000:]}"
    return out
