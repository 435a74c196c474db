"""The batcher on its own (no model, no server): batches form, lone requests do not
wait for the timeout, large requests run alone, one bad request fails alone."""
import asyncio

import numpy as np

from serving.batching import Batcher

KEY = ("version", "serving_default", ("out",))


def run_rows(calls):
    def run(inputs):
        x = inputs["x"]
        calls.append(len(x))
        if (x < 0).any():
            raise ValueError("negative input")
        return {"out": x * 2}
    return run


def test_lone_request_is_served_without_waiting_for_the_timeout():
    calls = []
    batcher = Batcher(max_batch_size=8, batch_timeout_micros=60_000_000, num_batch_threads=1)

    async def main():
        for i in range(3):   # a lone client, one request after the other
            out = await asyncio.wait_for(
                batcher.submit(KEY, run_rows(calls), {"x": np.array([i])}, 1), 10)
            assert out["out"].tolist() == [2 * i]

    try:
        asyncio.run(main())
    finally:
        batcher.shutdown()
    assert calls == [1, 1, 1]


def test_concurrent_requests_are_batched_and_split_back():
    calls, sizes = [], []
    batcher = Batcher(max_batch_size=8, batch_timeout_micros=50_000, num_batch_threads=1,
                      on_batch=lambda key, rows, requests: sizes.append((rows, requests)))

    async def main():
        outs = await asyncio.wait_for(asyncio.gather(*[
            batcher.submit(KEY, run_rows(calls), {"x": np.array([i, i])}, 2)
            for i in range(10)]), 30)
        assert [o["out"].tolist() for o in outs] == [[2 * i, 2 * i] for i in range(10)]

    try:
        asyncio.run(main())
    finally:
        batcher.shutdown()
    assert sum(calls) == 20 and max(calls) <= 8 and len(calls) < 10
    assert sum(r for r, _ in sizes) == 20


def test_oversized_request_runs_alone_and_bad_request_fails_alone():
    calls = []
    batcher = Batcher(max_batch_size=4, batch_timeout_micros=1000, num_batch_threads=1)

    async def main():
        big = batcher.submit(KEY, run_rows(calls), {"x": np.arange(10)}, 10)
        good = batcher.submit(KEY, run_rows(calls), {"x": np.array([1])}, 1)
        bad = batcher.submit(KEY, run_rows(calls), {"x": np.array([-1])}, 1)
        results = await asyncio.wait_for(
            asyncio.gather(big, good, bad, return_exceptions=True), 30)
        assert results[0]["out"].tolist() == list(range(0, 20, 2))
        assert results[1]["out"].tolist() == [2]
        assert isinstance(results[2], ValueError)

    try:
        asyncio.run(main())
    finally:
        batcher.shutdown()
    assert 10 in calls


def test_closed_loop_clients_get_whole_batches_without_waiting_for_the_timeout():
    """4 clients, each sending its next request when answered: once the batcher has
    seen them, every batch holds all 4 and none waits for the (huge) timeout."""
    calls, sizes = [], []
    batcher = Batcher(max_batch_size=32, batch_timeout_micros=60_000_000, num_batch_threads=1,
                      on_batch=lambda key, rows, requests: sizes.append(requests))

    async def client(i):
        for j in range(20):
            out = await batcher.submit(KEY, run_rows(calls), {"x": np.array([i * 100 + j])}, 1)
            assert out["out"].tolist() == [2 * (i * 100 + j)]

    async def main():
        await asyncio.wait_for(asyncio.gather(*[client(i) for i in range(4)]), 30)

    try:
        asyncio.run(main())
    finally:
        batcher.shutdown()
    assert sum(sizes) == 80
    assert sizes[2:] == [4] * (len(sizes) - 2)
