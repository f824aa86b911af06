"""Dynamic batching and bounded direct execution, both answering overload at once.

``BatchScheduler`` follows TF's ``SharedBatchScheduler`` queue (one per model version
and signature, shared by REST and gRPC): tasks join the open batch until it would pass
``max_batch_size``; the batch is then closed and a new one opened, unless the queue
already holds ``max_enqueued_batches`` batches (the open one included), in which case
the task is refused with UNAVAILABLE and TF's message. A batch runs when a batch thread
is free and it is full, closed, or ``batch_timeout_micros`` old. Batches are padded to
the next ``allowed_batch_sizes`` entry with copies of the first row (as TF does) and
results sliced back per request. Requests whose deadline passed while queued are
answered DEADLINE_EXCEEDED without running.

Batching changes which batch the kernels see, so a batched result can differ from the
same image run alone in the last float bit (oneDNN picks kernels by batch size), in TF
Serving as here.

``DirectRunner`` is the unbatched path: a fixed pool of threads and a bound on requests
in flight, so overload answers UNAVAILABLE instead of piling up threads.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from serving.errors import ServingError, deadline_exceeded, internal, invalid_argument, unavailable
from serving.model_config import BatchingConfig

Run = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
log = logging.getLogger("sightline.serving")
DEADLINE_MESSAGE = "Deadline exceeded while the request waited to run"


@dataclasses.dataclass
class _Task:
    inputs: dict[str, np.ndarray]
    size: int
    deadline: float  # time.monotonic()
    future: concurrent.futures.Future


def _batch_size(inputs: dict[str, np.ndarray]) -> int:
    sizes = {a.shape[0] for a in inputs.values() if a.ndim}
    if len(sizes) != 1:
        raise invalid_argument("all inputs must have the same batch (0th) dimension, got "
                               + ", ".join(f"{k}: {list(v.shape)}" for k, v in inputs.items()))
    return sizes.pop()


class BatchScheduler:
    """One batching queue and its batch threads."""

    def __init__(self, run: Run, config: BatchingConfig, name: str,
                 on_batch: Callable[[int], None] = lambda n: None,
                 on_depth: Callable[[int], None] = lambda n: None):
        self._run = run
        self._config = config
        self._on_batch, self._on_depth = on_batch, on_depth
        self._cv = threading.Condition()
        self._batches: collections.deque[list[_Task]] = collections.deque([[]])
        self._open_sizes: collections.deque[int] = collections.deque([0])
        self._open_started = 0.0
        self._enqueued_tasks = 0
        self._closed = False
        self._threads = [threading.Thread(target=self._loop, name=f"batch-{name}-{i}",
                                          daemon=True)
                         for i in range(config.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    @property
    def queue_depth(self) -> int:
        return self._enqueued_tasks

    def _full_message(self) -> str:
        return ("The batch scheduling queue to which this task was submitted is full; "
                f"currently {len(self._batches)} batches enqueued and "
                f"max_enqueued_batches is {self._config.max_enqueued_batches}")

    def full(self) -> str | None:
        """TF's queue-full message if not even a one-item request would be accepted now."""
        with self._cv:
            if (len(self._batches) >= self._config.max_enqueued_batches
                    and self._open_sizes[-1] >= self._config.max_batch_size):
                return self._full_message()
        return None

    def schedule(self, inputs: dict[str, np.ndarray], deadline: float
                 ) -> concurrent.futures.Future:
        """Queues one request; raises UNAVAILABLE at once if the queue is full."""
        size = _batch_size(inputs)
        limit = self._config.max_batch_size
        if size > limit:
            raise invalid_argument(
                f"Task size {size} is larger than maximum input batch size {limit}")
        task = _Task(inputs, size, deadline, concurrent.futures.Future())
        with self._cv:
            if self._closed:
                raise unavailable("The batch scheduler is shutting down")
            if self._open_sizes[-1] + size > limit:
                if len(self._batches) >= self._config.max_enqueued_batches:
                    raise unavailable(self._full_message())
                self._batches.append([])
                self._open_sizes.append(0)
            if not self._batches[-1]:
                self._open_started = time.monotonic()
            self._batches[-1].append(task)
            self._open_sizes[-1] += size
            self._enqueued_tasks += 1
            depth = self._enqueued_tasks
            self._cv.notify()
        self._on_depth(depth)
        return task.future

    def _take(self) -> list[_Task] | None:
        """Blocks until a batch may run; None when closed and empty."""
        timeout = self._config.batch_timeout_micros / 1e6
        with self._cv:
            while True:
                if len(self._batches) > 1:
                    self._open_sizes.popleft()
                    batch = self._batches.popleft()
                    break
                open_batch = self._batches[0]
                if open_batch:
                    waited = time.monotonic() - self._open_started
                    if (self._closed or waited >= timeout
                            or self._open_sizes[0] >= self._config.max_batch_size):
                        self._batches[0], self._open_sizes[0] = [], 0
                        batch = open_batch
                        break
                    self._cv.wait(timeout - waited)
                    continue
                if self._closed:
                    self._cv.notify_all()
                    return None
                self._cv.wait()
            self._enqueued_tasks -= len(batch)
            depth = self._enqueued_tasks
        self._on_depth(depth)
        return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            try:
                self._process(batch)
            except Exception as e:  # never lose a batch thread
                log.exception("batch failed")
                for task in batch:
                    if not task.future.done():
                        task.future.set_exception(internal(f"batch failed: {e}"))

    def _process(self, batch: list[_Task]) -> None:
        now = time.monotonic()
        live = []
        for task in batch:
            if task.deadline <= now:
                task.future.set_exception(deadline_exceeded(DEADLINE_MESSAGE))
            elif task.future.set_running_or_notify_cancel():
                live.append(task)
        if not live:
            return
        keys = set(live[0].inputs)
        shapes = {k: live[0].inputs[k].shape[1:] for k in keys}
        if any(set(t.inputs) != keys or any(t.inputs[k].shape[1:] != shapes[k] for k in keys)
               for t in live):
            for task in live:  # cannot concatenate: run them one by one
                self._run_tasks([task])
            return
        self._run_tasks(live)

    def _run_tasks(self, tasks: list[_Task]) -> None:
        total = sum(t.size for t in tasks)
        padded = next((s for s in self._config.allowed_batch_sizes if s >= total), total)
        inputs = {}
        for key in tasks[0].inputs:
            parts = [t.inputs[key] for t in tasks]
            if padded > total:
                first = tasks[0].inputs[key][:1]
                parts.append(np.repeat(first, padded - total, axis=0))
            inputs[key] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        self._on_batch(total)
        try:
            outputs = self._run(inputs)
        except ServingError as e:
            if len(tasks) > 1 and e.code_name == "INVALID_ARGUMENT":
                for task in tasks:  # one bad request must not fail its batch-mates
                    self._run_tasks([task])
                return
            for task in tasks:
                task.future.set_exception(e)
            return
        except Exception as e:
            for task in tasks:
                task.future.set_exception(internal(str(e)))
            return
        start = 0
        for task in tasks:
            task.future.set_result({k: v[start:start + task.size] for k, v in outputs.items()})
            start += task.size

    def close(self) -> None:
        """Stops accepting, runs everything queued, and joins the batch threads."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for thread in self._threads:
            thread.join()


class DirectRunner:
    """Unbatched execution on a fixed thread pool with a bound on requests in flight."""

    def __init__(self, run: Run, num_threads: int, max_in_flight: int, name: str,
                 on_depth: Callable[[int], None] = lambda n: None):
        self._run = run
        self._on_depth = on_depth
        self._max = max_in_flight
        self._in_flight = 0
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(num_threads, f"run-{name}")
        self._running = threading.BoundedSemaphore(num_threads)

    @property
    def queue_depth(self) -> int:
        return self._in_flight

    def full(self) -> str | None:
        """The overload message if a request would be refused now."""
        if self._in_flight >= self._max:
            return (f"The server is overloaded: {self._in_flight} requests in flight for "
                    f"this model version (max_in_flight is {self._max})")
        return None

    def _admit(self) -> None:
        """Counts a request in, or raises UNAVAILABLE if ``max_in_flight`` are already in."""
        with self._lock:
            refusal = self.full()
            if refusal:
                raise unavailable(refusal)
            self._in_flight += 1
            depth = self._in_flight
        self._on_depth(depth)

    def schedule(self, inputs: dict[str, np.ndarray], deadline: float
                 ) -> concurrent.futures.Future:
        self._admit()
        try:
            future = self._pool.submit(self._pooled, inputs, deadline)
        except RuntimeError:
            self._done(None)
            raise unavailable("The model version is shutting down") from None
        future.add_done_callback(self._done)
        return future

    def run_inline(self, inputs: dict[str, np.ndarray], deadline: float
                   ) -> concurrent.futures.Future:
        """Runs in the calling thread (a gRPC worker that would only wait), under the same
        in-flight bound and with at most ``num_threads`` model calls at once."""
        self._admit()
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            with self._running:
                future.set_result(self._call(inputs, deadline))
        except BaseException as e:  # the caller reads it from the future
            future.set_exception(e)
        finally:
            self._done(None)
        return future

    def _done(self, _future) -> None:
        with self._lock:
            self._in_flight -= 1
            depth = self._in_flight
        self._on_depth(depth)

    def _call(self, inputs: dict[str, np.ndarray], deadline: float) -> dict[str, np.ndarray]:
        if deadline <= time.monotonic():
            raise deadline_exceeded(DEADLINE_MESSAGE)
        return self._run(inputs)

    def _pooled(self, inputs: dict[str, np.ndarray], deadline: float) -> dict[str, np.ndarray]:
        with self._running:
            return self._call(inputs, deadline)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
