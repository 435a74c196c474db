"""Busy polling stays off while the server is crowded (serving/busy_poll.py's CROWD,
set by the batcher after each batch): a crowd of clients does not make the loop spin
between batches, and a lone client again gets the spin once the crowd has gone."""
import asyncio
import selectors
import socket
import time

import numpy as np
import pytest

from serving import busy_poll
from serving.batching import Batcher

KEY = ("version", "serving_default", ("out",))


def double(inputs):
    return {"out": inputs["x"] * 2}


@pytest.fixture(autouse=True)
def uncrowded():
    busy_poll.CROWD.crowded = False
    yield
    busy_poll.CROWD.crowded = False


def select_cpu_seconds(selector, timeout: float) -> float:
    """CPU time this thread spent in one ``select(timeout)`` (spinning costs CPU,
    sleeping in the kernel does not)."""
    start = time.thread_time()
    selector.select(timeout)
    return time.thread_time() - start


def test_a_crowded_loop_sleeps_instead_of_spinning():
    a, b = socket.socketpair()
    selector = busy_poll.BusyPollSelector(0.05)
    selector.register(a, selectors.EVENT_READ)
    try:
        assert select_cpu_seconds(selector, 0.06) > 0.02          # not crowded: it spins
        busy_poll.CROWD.crowded = True
        assert select_cpu_seconds(selector, 0.06) < 0.01          # crowded: it sleeps
        b.send(b"x")                                              # and still sees its sockets
        assert [key.fileobj for key, _ in selector.select(5.0)] == [a]
    finally:
        selector.close()
        a.close()
        b.close()


def test_the_batcher_says_when_the_server_is_crowded():
    batcher = Batcher(max_batch_size=32, batch_timeout_micros=20_000, num_batch_threads=1)

    async def client(requests):
        for i in range(requests):
            out = await batcher.submit(KEY, double, {"x": np.array([i])}, 1)
            assert out["out"].tolist() == [2 * i]

    async def main():
        await asyncio.gather(*[client(20) for _ in range(8)])     # 8 closed-loop clients
        during_crowd = busy_poll.CROWD.crowded
        await client(20)                                          # then a lone one
        return during_crowd, busy_poll.CROWD.crowded

    try:
        assert busy_poll.run(main(), 500) == (True, False)
    finally:
        batcher.shutdown()
