"""How Ctrl-C and SIGTERM end a run: :class:`RunSignals`, entered around a run in the
caller's thread. It owns the signal handlers while a run lives, and nothing else."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

__all__ = ["RunSignals"]


class RunSignals:
    """How Ctrl-C and SIGTERM end a run in the main thread (elsewhere, Python delivers neither).

    The first SIGINT or SIGTERM raises KeyboardInterrupt, which stops the run: the workers are
    killed and shared memory is released as the exception unwinds. Signals that follow (a
    second Ctrl-C, a wrapper such as ``uv run`` forwarding the terminal's) are only noted, so
    that they cannot cut that cleanup short and leave workers running: the run is ending
    anyway. A SIGTERM, first or later, becomes ``SystemExit(143)`` once the run is stopped: the
    shell sees the status of a process that SIGTERM ended, and the caller's ``finally`` blocks
    and exit handlers still run. A signal with a handler of the caller's is left to it.

    ``shield=True`` only holds signals back, and delivers the first again at the end (while
    :meth:`~parallel_jobs.Parallel.monitor` stops a background run).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, shield: bool = False) -> None:
        self.shield = shield
        self.owner = os.getpid()
        self.previous: dict[int, Any] = {}
        self.received: list[int] = []

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
        for signum in self.SIGNALS:
            handler = signal.getsignal(signum)
            if handler is defaults[signum]:
                self.previous[signum] = signal.signal(signum, self._on)

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        if self.shield:
            if self.received:
                # Delivered again now that the handlers of the run are back in place.
                signal.raise_signal(self.received[0])
            return
        if signal.SIGTERM in self.received:
            raise SystemExit(128 + signal.SIGTERM)
        if self.received and kind is None:
            raise KeyboardInterrupt(f"received signal {self.received[0]}")

    def _on(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.owner:
            # A worker forked during the run inherited this handler: it must die of the signal
            # as a worker does, not raise KeyboardInterrupt inside its task.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received.append(signum)
        if len(self.received) == 1 and not self.shield:
            raise KeyboardInterrupt(f"received signal {signum}")
