"""A bounded hand-off from the decode to a slower consumer on a thread of its own (the mp4
encoder): the decode goes on while earlier frames are consumed, and waits only when `depth`
items are queued, so that the host holds at most that many items besides the one being consumed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class _End:
    """Put after the last item: the thread ends when it takes it."""


class Handoff(Generic[T]):
    """Items passed to `consume` in order, on a daemon thread named `name`.

    An exception of `consume` stops the consuming: the items after it are taken and dropped (a
    producer never blocks on a consumer that is gone), and the exception is raised by the next
    `put`, or by `finish`.
    """

    def __init__(self, consume: Callable[[T], None], *, depth: int, name: str) -> None:
        self._consume = consume
        self._queue: queue.Queue[T | _End] = queue.Queue(maxsize=depth)
        self._cancelled = threading.Event()
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: T) -> None:
        """Queue `item`: at once, unless `depth` items wait (then until the consumer takes one).
        The item is consumed later: it must not change afterwards."""
        self._raise()
        self._queue.put(item)

    def finish(self) -> None:
        """Wait until every item is consumed and the thread has ended; raise the consumer's
        exception, if any."""
        self._queue.put(_End())
        self._thread.join()
        self._raise()

    def cancel(self, unblock: Callable[[], None] = lambda: None) -> None:
        """Drop the queued items, call `unblock` (which must make a `consume` under way return:
        kill the process it writes to) and wait for the thread to end. Any exception of the
        consumer is dropped too. Once finished or cancelled, a no-op."""
        self._cancelled.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        unblock()
        self._queue.put(_End())  # room for it: only this thread puts, and the queue is empty
        self._thread.join()

    def _run(self) -> None:
        while not isinstance(item := self._queue.get(), _End):
            if self._error is None and not self._cancelled.is_set():
                try:
                    self._consume(item)
                except Exception as error:  # raised in the producer's thread
                    self._error = error

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error
