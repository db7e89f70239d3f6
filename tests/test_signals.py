"""Ctrl-C and SIGTERM during a training loop are raised between steps (`molora.signals.interrupts_between`),
never inside a library's lock or a half-written file: the first is noted until the loop checks, a second
one raises at once."""
from __future__ import annotations

import os
import signal

import pytest

from molora.signals import Terminated, interrupts_between


@pytest.mark.parametrize("sig, kind", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)])
def test_a_signal_is_raised_where_the_loop_checks(sig, kind):
    before = signal.getsignal(sig)
    reached = []
    with pytest.raises(kind):
        with interrupts_between() as check:
            check()  # nothing noted yet
            os.kill(os.getpid(), sig)
            reached.append("after the signal")  # the signal did not interrupt this line
            check()
    assert reached == ["after the signal"]
    assert signal.getsignal(sig) is before  # the handlers are restored


def test_a_second_signal_raises_at_once():
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_between():
            os.kill(os.getpid(), signal.SIGINT)
            reached.append(1)
            os.kill(os.getpid(), signal.SIGINT)
            reached.append(2)
    assert reached == [1]
