"""Server-side batching: concurrent requests for the same signature run as one call.

Like TF Serving's ``--enable_batching``: requests are queued per (model version,
signature, input names/types/shapes, outputs); a queue becomes a batch, whose inputs
are concatenated along the first dimension and whose outputs are split back by
each request's row count, when a batch thread is free (``num_batch_threads``; while
all are busy the queue keeps filling) and

* it holds ``max_batch_size`` rows, or
* its oldest request has waited ``batch_timeout_micros``, or
* everyone is here: as many requests are waiting (queued or running) as usually
  wait at once, and a whole pass of the event loop added no request.

"As many as usually wait at once" is the median, over the last 8 batches, of the
most requests that waited at the same time between two batches: the server's
concurrency as it has seen it. This is where we differ from TF Serving, which
always waits for the timeout (so its timeouts are kept small, and so are its
batches when requests are handled one after the other, as in Python):

* a lone client is served at once, as if batching were off (it is the only
  request, and the usual number is one);
* 4 closed-loop clients get batches of 4, without waiting for a fifth;
* 32 clients get batches that fill up for as long as requests keep arriving, up
  to ``max_batch_size`` or the timeout, so the fixed cost of a model call is
  shared by many requests exactly when CPU is scarce;
* after the load drops, a few batches wait for the timeout until the median
  follows.

The loop's busy polling (``serving.busy_poll``) is told after each batch whether
more than one request usually waits: then it does not spin.

A lone request (a batch of one while no other batch runs) is run on the loop's
own thread, not handed to a batch thread: under low load that saves two thread
switches per request; under load batches hold many requests and go to the batch
threads, so the loop keeps accepting requests while the model computes.

A request larger than ``max_batch_size`` runs alone, as its own batch. Signatures
whose inputs or outputs are not batch-major run unbatched.

Everything here runs on the server's asyncio loop; model calls run on the batch
threads (TensorFlow releases the GIL while it computes). Per request the loop only
appends to a queue and schedules one readiness check; a queue waiting for its
timeout has a timer.
"""
import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from serving import busy_poll

RunFn = Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]
_PEAKS = 8                 # batches over which the concurrency is remembered


class ModelFuture(asyncio.Future):
    """The future of a request's model call, which its caller cannot cancel: the
    model runs on whatever happens. gRPC cancels the handler of a call whose
    client left (a cancel, a deadline passed); awaiting this future, the handler
    sees that cancellation only once the model has returned, so the call keeps
    its admission slot (serving/admission.py) for as long as the model works for
    it, at no cost to the calls nobody cancels."""

    def cancel(self, msg=None) -> bool:
        return False


class _Task:
    __slots__ = ("inputs", "rows", "future", "enqueued")

    def __init__(self, inputs, rows, future, enqueued):
        self.inputs, self.rows, self.future, self.enqueued = inputs, rows, future, enqueued


class _Queue:
    __slots__ = ("key", "run", "tasks", "rows", "arrived", "seen", "check_scheduled", "timer")

    def __init__(self, key, run):
        self.key, self.run, self.tasks, self.rows = key, run, [], 0
        self.arrived = 0           # requests ever added (seen: at the last check)
        self.seen = 0
        self.check_scheduled = False
        self.timer = None          # under load: fires when the oldest request times out


class Batcher:
    """Groups concurrent ``submit`` calls into batched model calls."""

    def __init__(self, max_batch_size: int = 32, batch_timeout_micros: int = 1000,
                 num_batch_threads: int = 1, executor: Optional[ThreadPoolExecutor] = None,
                 on_batch: Optional[Callable[[tuple, int, int], None]] = None):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.max_batch_size = max_batch_size
        self.timeout = max(0, batch_timeout_micros) / 1e6
        self.num_batch_threads = max(1, num_batch_threads)
        self.executor = executor or ThreadPoolExecutor(self.num_batch_threads,
                                                       thread_name_prefix="batch")
        self.on_batch = on_batch           # (its key, rows, requests) after each batch
        self._queues: Dict[tuple, _Queue] = {}
        self._waiting = 0                  # requests submitted and not answered yet
        self._peak = 0                     # most waiting at once since the last batch
        self._peaks = deque([1], maxlen=_PEAKS)   # ... for the last batches
        self._busy = 0                     # batch threads running

    async def submit(self, key: tuple, run: RunFn, inputs: Dict[str, np.ndarray],
                     rows: int) -> Dict[str, np.ndarray]:
        """Run ``run`` on ``inputs`` (alias -> array with ``rows`` rows), batched with
        other requests of the same ``key``; returns this request's outputs."""
        loop = asyncio.get_running_loop()
        future = ModelFuture(loop=loop)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(key, run)
        queue.tasks.append(_Task(inputs, rows, future, time.perf_counter()))
        queue.rows += rows
        queue.arrived += 1
        self._waiting += 1
        if self._waiting > self._peak:
            self._peak = self._waiting
        self._schedule_check(queue, loop)
        return await future

    def _schedule_check(self, queue: _Queue, loop=None) -> None:
        if not queue.check_scheduled:
            # call_soon: the check runs on the next pass of the loop, after the
            # requests read off the sockets in this pass have joined.
            queue.check_scheduled = True
            queue.seen = queue.arrived
            (loop or asyncio.get_running_loop()).call_soon(self._check, queue)

    def _check(self, queue: _Queue) -> None:
        queue.check_scheduled = False
        if not queue.tasks or self._queues.get(queue.key) is not queue:
            return
        if self._busy >= self.num_batch_threads:
            return     # _complete looks at the queues when a thread frees up
        waited = time.perf_counter() - queue.tasks[0].enqueued
        everyone = self._waiting >= self._concurrency()
        if (queue.rows >= self.max_batch_size or waited >= self.timeout
                or (everyone and queue.arrived == queue.seen)):
            self._dispatch(queue)
            return
        if queue.timer is None:
            queue.timer = asyncio.get_running_loop().call_later(
                self.timeout - waited, self._on_timer, queue)
        if everyone:   # requests still arriving: look again after the next pass
            self._schedule_check(queue)

    def _concurrency(self) -> int:
        """How many requests usually wait at once: the median, over the last
        batches, of the most that waited (queued or running) between two batches."""
        peaks = sorted(self._peaks)
        return peaks[len(peaks) // 2]

    def _on_timer(self, queue: _Queue) -> None:
        queue.timer = None
        if not queue.check_scheduled:
            self._check(queue)

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
        self._peaks.append(self._peak)
        self._peak = self._waiting
        busy_poll.CROWD.crowded = self._concurrency() > 1
        if queue.timer is not None:
            queue.timer.cancel()
            queue.timer = None
        if not queue.tasks:
            del self._queues[queue.key]
        return taken

    def _dispatch(self, queue: _Queue) -> None:
        tasks = self._take(queue)
        if self._busy == 0 and len(tasks) == 1 and not queue.tasks:
            # A lone request while nothing else runs: call the model right here
            # instead of handing it to a batch thread and back (two thread
            # switches and a wake-up of the loop, about a third of a lone
            # request's time); the loop has nothing else to do meanwhile.
            self._busy += 1
            self._complete(queue.key, tasks, None, _run_batch(queue.run, tasks))
            return
        self._busy += 1
        loop = asyncio.get_running_loop()
        # One hop back to the loop per batch (no asyncio Future wrapping the
        # executor's): the batch thread schedules _finished itself.
        try:
            fut = self.executor.submit(_run_batch, queue.run, tasks)
        except RuntimeError as exc:   # shutting down
            self._complete(queue.key, tasks, exc, None)
            return

        def done(f):
            try:
                loop.call_soon_threadsafe(self._finished, f, queue.key, tasks)
            except RuntimeError:   # the loop is closed: nobody is waiting any more
                pass

        fut.add_done_callback(done)
        if queue.tasks and self._busy < self.num_batch_threads:
            self._dispatch(queue)   # more than max_batch_size rows were waiting

    def _finished(self, fut, key: tuple, tasks: List[_Task]) -> None:
        exc = fut.exception()
        self._complete(key, tasks, exc, None if exc is not None else fut.result())

    def _complete(self, key: tuple, tasks: List[_Task], exc, results) -> None:
        self._busy -= 1
        self._waiting -= len(tasks)
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
            self.on_batch(key, sum(t.rows for t in tasks), len(tasks))
        # A thread is free: the queues that filled meanwhile are looked at (oldest
        # first) on the next pass, by the same rules.
        for queue in sorted(self._queues.values(), key=lambda q: q.tasks[0].enqueued):
            self._schedule_check(queue)

    def shutdown(self, wait: bool = True) -> None:
        self.executor.shutdown(wait=wait, cancel_futures=not wait)


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
    """The queue of a call to ``version_obj`` (a ModelVersion); it starts with the
    model's name (``model_name_of``)."""
    return (version_obj.name, id(version_obj), signature_name, outputs) + tuple(
        (n, a.dtype.str, a.shape[1:]) for n, a in sorted(inputs.items()))



def model_name_of(key: tuple) -> str:
    """The model's name in a ``batch_key`` (what ``on_batch`` labels its metrics with)."""
    return key[0]
