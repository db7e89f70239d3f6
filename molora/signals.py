"""SIGTERM handled like Ctrl-C: ``with sigterm_raises():`` turns the signal into ``Terminated`` (a
``KeyboardInterrupt``) in the main thread, so the same cleanups run (temporary files removed, folder
locks released, logs closed) and the command prints how to continue. A second SIGTERM while those
run ends the process at once (the default action)."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

__all__ = ["Terminated", "sigterm_raises"]


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated()


@contextmanager
def sigterm_raises() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
