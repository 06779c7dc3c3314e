"""Stopping a run cleanly: SIGINT/SIGTERM ask the loop to checkpoint and stop after the current step."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT/SIGTERM set an event the loop checks after each step (it then checkpoints and stops);
    a second Ctrl-C interrupts at once. Outside the main thread no handler can be set, and the
    event stays clear."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum, frame):  # the signal handler signature
        event.set()
        signal.signal(signum, previous[signum])

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, handler)
    try:
        yield event
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
