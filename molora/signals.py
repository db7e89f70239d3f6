"""SIGTERM handled like Ctrl-C: ``with sigterm_raises():`` turns the signal into ``Terminated`` (a
``KeyboardInterrupt``) in the main thread, so the same cleanups run (temporary files removed, folder
locks released, logs closed) and the command prints how to continue. A second SIGTERM while those
run ends the process at once (the default action)."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

__all__ = ["Terminated", "sigterm_raises", "interrupts_between"]


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


def _interrupt(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextmanager
def interrupts_between() -> Iterator:
    """Within the block, Ctrl-C and SIGTERM are noted and raised by ``check()`` (yielded), which the
    caller calls where it can stop cleanly (between training steps): never inside a library's lock, a
    queue or a half-written file, where an interrupt can leave a writer thread waiting forever. A second
    signal raises at once."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    noted: list[int] = []

    def on_signal(signum, frame) -> None:
        if noted:
            raise _interrupt(signum)
        noted.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def check() -> None:
        if noted:
            raise _interrupt(noted[0])

    try:
        yield check
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
