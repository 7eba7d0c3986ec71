"""Ctrl-C held back for the length of a block (the main thread only; elsewhere signals do not arrive)."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


@contextmanager
def sigint_deferred():
    """Hold a SIGINT that arrives inside the block and deliver it when the block ends.

    For blocks that must not be cut in half: the files of one epoch, and the fork of DataLoader
    workers (a KeyboardInterrupt raised in CPython's at-fork hooks is reported as "Exception
    ignored" and lost, so the run would go on). Forked children inherit the holding handler, so
    workers leave the Ctrl-C to the main process, which shuts them down.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous in (signal.SIG_IGN, None):
        yield  # ignored (e.g. started in the background), or a handler not set from Python: left alone
        return
    pending = []
    signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        if previous is signal.SIG_DFL:
            signal.raise_signal(signal.SIGINT)
        elif previous is signal.default_int_handler:
            raise KeyboardInterrupt
        else:
            previous(signal.SIGINT, None)
