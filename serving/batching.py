"""Server-side batching: concurrent requests for the same signature run as one call.

Like TF Serving's ``--enable_batching``: requests are queued per (model version,
signature, input names/types/shapes, outputs); a queue becomes a batch, whose inputs
are concatenated along the first dimension and whose outputs are split back by
each request's row count, when a batch thread is free (``num_batch_threads``; while
all are busy the queue keeps filling) and

* it holds ``max_batch_size`` rows, or
* its oldest request has waited ``batch_timeout_micros``, or
* it holds as many requests as the previous batch of that queue had: the clients
  answered by that batch are back, so waiting longer would only add latency. A
  lone client is thus served at once, as if batching were off (its previous batch
  held one request); 32 closed-loop clients get batches of 32 without waiting for
  the timeout; when clients leave, one batch waits the timeout and the next
  expectation is the smaller size.

A request larger than ``max_batch_size`` runs alone, as its own batch. Signatures
whose inputs or outputs are not batch-major run unbatched.

Everything here runs on the server's asyncio loop; model calls run on the batch
threads (TensorFlow releases the GIL while it computes). Per request the loop only
appends to a queue and schedules at most one readiness check per loop iteration;
timers exist only while a queue is actually waiting for its timeout.
"""
import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

RunFn = Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]
_MAX_REMEMBERED = 1024     # previous-batch sizes kept (one per queue key)


class _Task:
    __slots__ = ("inputs", "rows", "future", "enqueued")

    def __init__(self, inputs, rows, future, enqueued):
        self.inputs, self.rows, self.future, self.enqueued = inputs, rows, future, enqueued


class _Queue:
    __slots__ = ("key", "run", "tasks", "rows", "timer", "check_scheduled")

    def __init__(self, key, run):
        self.key, self.run, self.tasks, self.rows = key, run, [], 0
        self.timer = None
        self.check_scheduled = False


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
        self._previous: Dict[tuple, int] = {}   # requests in the previous batch, per key
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
        queue.tasks.append(_Task(inputs, rows, future, time.perf_counter()))
        queue.rows += rows
        if not queue.check_scheduled:
            # call_soon: requests already read off the sockets in this loop pass join first.
            queue.check_scheduled = True
            loop.call_soon(self._check, queue)
        return await future

    def _ready(self, queue: _Queue, now: float) -> bool:
        if not queue.tasks:
            return False
        if queue.rows >= self.max_batch_size or self.timeout == 0:
            return True
        if now - queue.tasks[0].enqueued >= self.timeout:
            return True
        return len(queue.tasks) >= self._previous.get(queue.key, 1)

    def _check(self, queue: _Queue) -> None:
        queue.check_scheduled = False
        self._maybe_dispatch(queue)

    def _on_timer(self, queue: _Queue) -> None:
        queue.timer = None
        self._maybe_dispatch(queue)

    def _maybe_dispatch(self, queue: _Queue) -> None:
        if not queue.tasks or self._queues.get(queue.key) is not queue:
            return
        if self._busy >= self.num_batch_threads:
            return     # _finished looks at the queues when a thread frees up
        if self._ready(queue, time.perf_counter()):
            self._dispatch(queue)
        else:
            self._arm_timer(queue)

    def _arm_timer(self, queue: _Queue) -> None:
        """Wake up when the oldest request of ``queue`` has waited the timeout. Only
        armed while a batch thread is free: a busy one, when it frees up, looks at
        the queues itself."""
        if queue.timer is not None or not queue.tasks or self.timeout == 0:
            return
        remaining = self.timeout - (time.perf_counter() - queue.tasks[0].enqueued)
        loop = asyncio.get_running_loop()
        queue.timer = loop.call_later(max(0.0, remaining), self._on_timer, queue)

    def _take(self, queue: _Queue) -> List[_Task]:
        tasks = queue.tasks
        if queue.rows <= self.max_batch_size:
            taken, queue.tasks, rows = tasks, [], queue.rows
        else:
            rows, n = 0, 0
            for task in tasks:
                if n and rows + task.rows > self.max_batch_size:
                    break
                rows += task.rows
                n += 1
            taken, queue.tasks = tasks[:n], tasks[n:]
        queue.rows -= rows
        if queue.timer is not None:
            queue.timer.cancel()
            queue.timer = None
        if not queue.tasks:
            del self._queues[queue.key]
        if len(self._previous) >= _MAX_REMEMBERED and queue.key not in self._previous:
            self._previous.clear()
        self._previous[queue.key] = len(taken)
        return taken

    def _dispatch(self, queue: _Queue) -> None:
        tasks = self._take(queue)
        self._busy += 1
        loop = asyncio.get_running_loop()
        # One hop back to the loop per batch (no asyncio Future wrapping the
        # executor's): the batch thread schedules _finished itself.
        try:
            fut = self.executor.submit(_run_batch, queue.run, tasks)
        except RuntimeError as exc:   # shutting down
            self._complete(tasks, exc, None)
            return

        def done(f):
            try:
                loop.call_soon_threadsafe(self._finished, f, tasks)
            except RuntimeError:   # the loop is closed: nobody is waiting any more
                pass

        fut.add_done_callback(done)
        if queue.tasks:   # more than max_batch_size rows were waiting
            self._maybe_dispatch(queue)

    def _finished(self, fut, tasks: List[_Task]) -> None:
        exc = fut.exception()
        self._complete(tasks, exc, None if exc is not None else fut.result())

    def _complete(self, tasks: List[_Task], exc, results) -> None:
        self._busy -= 1
        if exc is not None:
            for task in tasks:
                if not task.future.done():
                    task.future.set_exception(exc)
        else:
            for task, outputs in zip(tasks, results):
                if task.future.done():
                    continue
                if isinstance(outputs, Exception):
                    task.future.set_exception(outputs)
                else:
                    task.future.set_result(outputs)
        if self.on_batch:
            self.on_batch(sum(t.rows for t in tasks), len(tasks))
        # A thread is free: serve the queue that has waited longest and is ready.
        if not self._queues:
            return
        now = time.perf_counter()
        for queue in sorted(self._queues.values(), key=lambda q: q.tasks[0].enqueued):
            if self._busy >= self.num_batch_threads:
                break
            if self._ready(queue, now):
                self._dispatch(queue)
            else:
                self._arm_timer(queue)

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

