"""Busy polling stays off while the server is crowded (serving/busy_poll.py's CROWD,
set by the batcher after each batch): a crowd of clients does not make the loop spin
between batches, and a lone client again gets the spin once the crowd has gone."""
import asyncio
import selectors
import socket

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


class CountingSelector(selectors.DefaultSelector):
    """The platform's selector, counting its polls (timeout 0: a spin) and its waits."""

    def __init__(self):
        super().__init__()
        self.polls = self.waits = 0

    def select(self, timeout=None):
        if timeout is not None and timeout <= 0:
            self.polls += 1
        else:
            self.waits += 1
        return super().select(timeout)


def polls_in_one_select(selector, counting: CountingSelector, timeout: float) -> int:
    """How many times one ``select(timeout)`` polled its sockets before it slept
    (a count, so a loaded machine that takes the CPU away does not change it much)."""
    before = counting.polls
    selector.select(timeout)
    return counting.polls - before


def test_a_crowded_loop_sleeps_instead_of_spinning():
    a, b = socket.socketpair()
    counting = CountingSelector()
    selector = busy_poll.BusyPollSelector(0.05, inner=counting)
    selector.register(a, selectors.EVENT_READ)
    try:
        assert polls_in_one_select(selector, counting, 0.06) >= 10     # not crowded: it spins
        busy_poll.CROWD.crowded = True
        waits = counting.waits
        assert polls_in_one_select(selector, counting, 0.06) == 0      # crowded: it sleeps at once
        assert counting.waits == waits + 1
        b.send(b"x")                                                  # and still sees its sockets
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
