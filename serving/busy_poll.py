"""Busy polling for the server's event loop, like Linux's ``SO_BUSY_POLL``: when the
loop has nothing to do, it keeps checking its sockets for up to ``micros``
microseconds before it goes to sleep in the kernel.

Why: on a (virtual) machine whose CPUs go idle between requests, the first work
after a wake-up runs on cold caches and a CPU that is still waking up, so one client
sending requests one after another would see every request run cold (measured in
docs/bench-serving.md). Spinning through the short gap until the client's next
request keeps the CPU awake.

The cost is CPU time only while requests keep coming: at most ``micros`` per
wake-up of the loop. An idle server sleeps as before (one spin after its last
event), and a busy one never spins (its loop always has work). Nor does a crowded
one (``CROWD``: many requests waiting at once, as ``serving.batching`` sees them):
its next event is near anyway, and between batches a spin only takes the CPU from
the batch threads and from clients on the same machine. ``0`` turns it off.
"""
import asyncio
import selectors
import time


class Crowd:
    """Whether many requests usually wait at once (set by ``serving.batching`` after
    each batch); while they do, the loop does not spin."""
    __slots__ = ("crowded",)

    def __init__(self):
        self.crowded = False


CROWD = Crowd()


class BusyPollSelector(selectors.BaseSelector):
    """A selector that polls (timeout 0) for up to ``seconds`` before it blocks."""

    def __init__(self, seconds: float, inner: selectors.BaseSelector = None):
        self.seconds = seconds
        self.inner = inner or selectors.DefaultSelector()

    def select(self, timeout=None):
        inner = self.inner
        if timeout is not None and timeout <= 0:
            return inner.select(0)
        if CROWD.crowded:
            return inner.select(timeout)
        start = time.perf_counter()
        spin_until = start + (self.seconds if timeout is None else min(self.seconds, timeout))
        while True:
            ready = inner.select(0)
            if ready:
                return ready
            now = time.perf_counter()
            if now >= spin_until:
                break
        if timeout is not None:
            timeout = max(0.0, timeout - (now - start))
        return inner.select(timeout)

    def register(self, fileobj, events, data=None):
        return self.inner.register(fileobj, events, data)

    def unregister(self, fileobj):
        return self.inner.unregister(fileobj)

    def modify(self, fileobj, events, data=None):
        return self.inner.modify(fileobj, events, data)

    def get_key(self, fileobj):
        return self.inner.get_key(fileobj)

    def get_map(self):
        return self.inner.get_map()

    def close(self):
        self.inner.close()


def new_event_loop(busy_poll_micros: int) -> asyncio.AbstractEventLoop:
    """An asyncio loop that busy-polls for ``busy_poll_micros`` (0: a plain loop)."""
    if busy_poll_micros <= 0:
        return asyncio.new_event_loop()
    return asyncio.SelectorEventLoop(BusyPollSelector(busy_poll_micros / 1e6))


def run(main, busy_poll_micros: int):
    """``asyncio.run(main)`` on a ``new_event_loop(busy_poll_micros)``."""
    loop = new_event_loop(busy_poll_micros)
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_all(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


CANCEL_WAIT_SECONDS = 5.0


def _cancel_all(loop) -> None:
    """Cancel what is left; wait a little for it (a call whose model never returns
    does not end on cancellation: it is left to the process's exit)."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.wait(tasks, timeout=CANCEL_WAIT_SECONDS))
