"""Ctrl-C and eviction: SIGINT and SIGTERM end training between steps, never halfway through
writing a checkpoint or an output, and ``main`` reports them in one line."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalGuard:
    """SIGINT (Ctrl-C) and SIGTERM (Azure ML's low-priority eviction) end training cleanly.

    The handler raises ``Interrupted`` between steps; inside ``critical()`` (a checkpoint or
    output being written) it waits for the block to end, so a signal never leaves half a
    checkpoint. ``main`` turns it into one line and exit status 128 + the signal number.
    """

    def __init__(self) -> None:
        self.saved_epoch = 0  # the last epoch whose checkpoint is on disk
        self.total_epochs = 0
        self._depth = 0
        self._pending: int | None = None

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self._depth:
            self._pending = signum
            return
        raise Interrupted(signum)

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if not self._depth and self._pending is not None:
            signum, self._pending = self._pending, None
            raise Interrupted(signum)

    def message(self, signum: int) -> str:
        name = signal.Signals(signum).name
        if not self.saved_epoch:
            return f"interrupted ({name}) before the first epoch finished; rerun to start again"
        return (
            f"interrupted ({name}) after epoch {self.saved_epoch} of {self.total_epochs}; "
            "rerun the same command to resume"
        )
