"""Server-side batching: concurrent requests for the same signature run as one call.

Like TF Serving's ``--enable_batching``: requests are queued per (model version,
signature, input names/types/shapes, outputs); a queue becomes a batch, whose inputs
are concatenated along the first dimension and whose outputs are split back by
each request's row count, when

* it holds ``max_batch_size`` rows, or
* its oldest request has waited ``batch_timeout_micros``, or
* every request the batcher holds is waiting in queues (none is running), so no
  answer can bring a client back soon and waiting would only add latency — a lone
  client is served at once, as if batching were off,

and a batch thread is free (``num_batch_threads``; while all are busy the queue
keeps filling up to ``max_batch_size``). A request larger than ``max_batch_size``
runs alone, as its own batch. Signatures whose inputs or outputs are not
batch-major run unbatched.

Everything here runs on the server's asyncio loop; model calls run on a thread pool
(TensorFlow releases the GIL while it computes).
"""
import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

RunFn = Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]


class _Task:
    __slots__ = ("inputs", "rows", "future", "enqueued")

    def __init__(self, inputs, rows, future):
        self.inputs, self.rows, self.future = inputs, rows, future
        self.enqueued = time.perf_counter()


class _Queue:
    __slots__ = ("key", "run", "tasks", "rows", "timer")

    def __init__(self, key, run):
        self.key, self.run, self.tasks, self.rows, self.timer = key, run, [], 0, None


class Batcher:
    """Groups concurrent ``submit`` calls into batched model calls."""

    def __init__(self, max_batch_size: int = 32, batch_timeout_micros: int = 1000,
                 num_batch_threads: int = 1, executor: Optional[ThreadPoolExecutor] = None,
                 on_batch: Optional[Callable[[int, int], None]] = None):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.max_batch_size = max_batch_size
        self.timeout = max(0, batch_timeout_micros) / 1e6
        self.num_batch_threads = max(1, num_batch_threads)
        self.executor = executor or ThreadPoolExecutor(self.num_batch_threads,
                                                       thread_name_prefix="batch")
        self.on_batch = on_batch           # (rows, requests) after each batch
        self._queues: Dict[tuple, _Queue] = {}
        self._waiting = 0                  # requests in queues
        self._outstanding = 0              # requests submitted and not answered
        self._busy = 0                     # batch threads running

    async def submit(self, key: tuple, run: RunFn, inputs: Dict[str, np.ndarray],
                     rows: int) -> Dict[str, np.ndarray]:
        """Run ``run`` on ``inputs`` (alias -> array with ``rows`` rows), batched with
        other requests of the same ``key``; returns this request's outputs."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(key, run)
        queue.tasks.append(_Task(inputs, rows, future))
        queue.rows += rows
        self._waiting += 1
        self._outstanding += 1
        try:
            if len(queue.tasks) == 1 and self.timeout > 0:
                queue.timer = loop.call_later(self.timeout, self._maybe_dispatch, key, True)
            # call_soon: requests already read off the sockets in this loop pass join first.
            loop.call_soon(self._maybe_dispatch, key, False)
            return await future
        finally:
            self._outstanding -= 1

    def _ready(self, queue: _Queue, timed_out: bool) -> bool:
        if not queue.tasks:
            return False
        if queue.rows >= self.max_batch_size or timed_out or self.timeout == 0:
            return True
        if time.perf_counter() - queue.tasks[0].enqueued >= self.timeout:
            return True
        return self._waiting >= self._outstanding     # nobody else can arrive soon

    def _maybe_dispatch(self, key, timed_out: bool) -> None:
        queue = self._queues.get(key)
        if queue is None or self._busy >= self.num_batch_threads:
            return
        if not self._ready(queue, timed_out):
            return
        self._dispatch(queue)

    def _take(self, queue: _Queue) -> List[_Task]:
        taken, rows = [], 0
        while queue.tasks:
            task = queue.tasks[0]
            if taken and rows + task.rows > self.max_batch_size:
                break
            taken.append(queue.tasks.pop(0))
            rows += task.rows
        queue.rows -= rows
        self._waiting -= len(taken)
        if queue.timer is not None:
            queue.timer.cancel()
            queue.timer = None
        if queue.tasks:   # the rest starts a new wait
            loop = asyncio.get_running_loop()
            remaining = max(0.0, self.timeout - (time.perf_counter() - queue.tasks[0].enqueued))
            queue.timer = loop.call_later(remaining, self._maybe_dispatch, queue.key, True)
        else:
            del self._queues[queue.key]
        return taken

    def _dispatch(self, queue: _Queue) -> None:
        tasks = self._take(queue)
        self._busy += 1
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.executor, _run_batch, queue.run, tasks)
        fut.add_done_callback(lambda f: self._finished(f, tasks))

    def _finished(self, fut, tasks: List[_Task]) -> None:
        self._busy -= 1
        exc = fut.exception()
        if exc is not None:
            for task in tasks:
                if not task.future.done():
                    task.future.set_exception(exc)
        else:
            for task, outputs in zip(tasks, fut.result()):
                if task.future.done():
                    continue
                if isinstance(outputs, Exception):
                    task.future.set_exception(outputs)
                else:
                    task.future.set_result(outputs)
        if self.on_batch:
            self.on_batch(sum(t.rows for t in tasks), len(tasks))
        # A thread is free: serve the queue that has waited longest and is ready.
        for queue in sorted(self._queues.values(), key=lambda q: q.tasks[0].enqueued):
            if self._busy >= self.num_batch_threads:
                break
            if self._ready(queue, False):
                self._dispatch(queue)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)


def _run_batch(run: RunFn, tasks: Sequence[_Task]) -> List[object]:
    """Outputs (or the exception) of each task. When a merged batch fails, each task
    is run alone so one bad request does not fail the others batched with it."""
    if len(tasks) == 1:
        return [_run_one(run, tasks[0])]
    names = tasks[0].inputs.keys()
    merged = {n: np.concatenate([t.inputs[n] for t in tasks], axis=0) for n in names}
    try:
        outputs = run(merged)
    except Exception:   # noqa: BLE001
        return [_run_one(run, t) for t in tasks]
    total = sum(t.rows for t in tasks)
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != total:
            raise RuntimeError(f"batched output {name} has shape {value.shape}, "
                               f"expected {total} rows")
    results, start = [], 0
    for task in tasks:
        end = start + task.rows
        results.append({n: v[start:end] for n, v in outputs.items()})
        start = end
    return results


def _run_one(run: RunFn, task: _Task):
    try:
        return run(task.inputs)
    except Exception as exc:   # noqa: BLE001 - handed to the waiting request
        return exc


def batch_key(version_obj, signature_name: str, inputs: Dict[str, np.ndarray],
              outputs: Tuple[str, ...]) -> tuple:
    return (id(version_obj), signature_name, outputs) + tuple(
        (n, a.dtype.str, a.shape[1:]) for n, a in sorted(inputs.items()))
