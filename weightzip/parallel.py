"""Compressing a safetensors checkpoint's tensors in parallel: worker processes on this machine (``jobs``) or
the workers of a Dask distributed cluster (``scheduler``).

Each task names one tensor by its file, byte range, dtype and shape; the worker maps that range of the file
(memory-mapped on this machine; on a cluster the path must be on storage the workers share), clusters and
encodes the tensor, and sends back the encoded record (:class:`weightzip.format.records.EncodedRecord`: header
record plus section bytes). The parent hands the records to the streaming `.wz` writer in the checkpoint's
order, so the file is byte-identical to the serial one. At most a few tasks per worker are in flight, so the
parent holds a bounded number of encoded records however large the checkpoint.

A worker that dies, a task that raises, or a scheduler that does not answer raises :class:`ParallelError`
(one line naming the tensor); the writer then leaves no output.
"""

from __future__ import annotations

import collections
import mmap
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from weightzip.core.errors import WeightzipError

CONNECT_TIMEOUT_S = 6  # a scheduler that does not answer is reported within this (issue 12: within 10 s; the
# rest is the client's set-up. Importing distributed, once per process, comes before: 2-8 s on a loaded 2-core machine)
TASKS_PER_WORKER = 2  # in flight per worker: keeps every worker busy, bounds the records held


class ParallelError(WeightzipError):
    """A worker that died, a task that failed, or a scheduler that could not be reached."""


@dataclass(frozen=True)
class TensorTask:
    """One tensor to encode: where its bytes are (file, absolute byte offset), its dtype name and shape."""

    name: str
    path: str
    start: int
    nbytes: int
    dtype: str  # safetensors name, e.g. "F32"
    shape: tuple[int, ...]


@dataclass(frozen=True)
class EncodeSettings:
    """How every tensor is encoded (the arguments of :func:`weightzip.safetensors_wz.encode_array` and the
    writer's encode options), sent once with each task."""

    config: object  # ClusterConfig | None
    per_channel: bool
    max_clusters: int
    sparsity: float | None
    encode_options: object  # weightzip.format.records.EncodeOptions


def checkpoint_tasks(checkpoint) -> list[TensorTask]:
    """One task per tensor of a :class:`~weightzip.shards.SafetensorsCheckpoint`, in layout order."""
    tasks = []
    for file, names, _ in checkpoint.layout.shards:
        header = checkpoint.headers[file]
        entries = {entry.name: entry for entry in header.entries}
        for name in names:
            entry = entries[name]
            tasks.append(TensorTask(name, str(os.path.abspath(header.path)), header.data_start + entry.begin,
                                    entry.nbytes, entry.dtype, tuple(entry.shape)))
    return tasks


def encode_task(task: TensorTask, settings: EncodeSettings):
    """(EncodedRecord, TensorAction) of one tensor, read from its file: what a worker runs (NumPy only)."""
    from weightzip.core.tensor_storage import action_of, encode_array
    from weightzip.format.records import encode_record
    from weightzip.shards import ShardError, TensorEntry, numpy_view

    entry = TensorEntry(task.name, task.dtype, task.shape, task.start, task.start + task.nbytes)
    try:
        with open(task.path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if size < task.start + task.nbytes:  # mapping past the end would kill the worker (SIGBUS)
                raise ShardError(f"{task.path}: is {size} bytes now, tensor {task.name!r} needs bytes up to "
                                 f"{task.start + task.nbytes} (was the file changed during the run?)")
            mapped = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_COPY) if task.nbytes else None
    except OSError as error:
        raise ShardError(f"{task.path}: cannot be read on this worker ({error.strerror or error})") from None
    array = numpy_view(mapped, task.start, entry)
    value = encode_array(task.name, array, None, settings.config, settings.per_channel, settings.max_clusters,
                         settings.sparsity)
    del array
    return encode_record(task.name, value, settings.encode_options), action_of(task.name, value, settings.config)


def warm_up(settings: EncodeSettings) -> None:
    """Encode a small tensor with `settings` in this process, before worker processes are forked from it.

    The first numba call of a process sets up numba's compiler target (~0.8 CPU s: registries, SciPy's BLAS
    bindings) and each kernel is then loaded from the cache (~0.1 s together): done here, once, the forked
    workers inherit it all; otherwise every worker pays it again (measured: 2 workers used ~0.9 CPU s more
    than the serial run on a 14-tensor checkpoint). The sample has 81,920 values (above the histogram's bin
    count up to k = 256, so the histogram kernels load too) but only 300 distinct ones: its DP is small."""
    import numpy as np

    from weightzip.core.tensor_storage import encode_array
    from weightzip.format.records import encode_record

    sample = (np.random.default_rng(0).integers(-150, 150, size=(256, 320)) * 0.001).astype(np.float32)
    try:
        value = encode_array("warm-up", sample, None, settings.config, settings.per_channel, settings.max_clusters,
                             settings.sparsity)
        encode_record("warm-up", value, settings.encode_options)
    except WeightzipError:  # only a head start: settings that fail here fail on the checkpoint's own tensors, named
        pass


def check_parallel_options(jobs: int | None, scheduler: str | None) -> None:
    """Refuse a job count below 1, an empty scheduler address, or both options at once."""
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ParallelError(f"jobs must be an integer >= 1, got {jobs!r}")
    if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.strip()):
        raise ParallelError(f"scheduler must be an address such as tcp://host:8786, got {scheduler!r}")
    if jobs is not None and scheduler is not None:
        raise ParallelError("jobs and scheduler exclude each other: the cluster's workers do the work")


def ordered_map(function: Callable, tasks: Iterable[TensorTask], *arguments, jobs: int | None = None,
                scheduler: str | None = None, warm: Callable[[], None] | None = None) -> Iterator:
    """``function(task, *arguments)`` for every task, computed in parallel, yielded in the tasks' order.

    ``jobs``: that many worker processes on this machine; ``scheduler``: the Dask distributed scheduler at
    that address (its workers run the tasks). Failures raise :class:`ParallelError`, naming the task.
    ``warm``: called in this process before worker processes are forked from it (e.g. :func:`warm_up`).
    """
    check_parallel_options(jobs, scheduler)
    if scheduler is not None:
        yield from _dask_map(function, list(tasks), arguments, scheduler)
    else:
        yield from _process_map(function, list(tasks), arguments, jobs or 1, warm)


def _process_map(function, tasks, arguments, jobs: int, warm: Callable[[], None] | None) -> Iterator:
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # fork where the system has it: the workers inherit the imported modules (numba's compiled kernels,
    # weightzip), which a spawned worker imports again. The workers only run NumPy/numba code on their own
    # tensor, nothing of the parent's other threads (the progress display). Elsewhere: spawn.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    if context.get_start_method() == "fork" and warm is not None:
        warm()  # numba's start-up once here, inherited by every worker (see warm_up)
    executor = ProcessPoolExecutor(max_workers=jobs, mp_context=context)
    pending: collections.deque = collections.deque()
    queue = iter(tasks)
    try:
        for task in queue:
            pending.append((task, executor.submit(function, task, *arguments)))
            if len(pending) >= jobs * TASKS_PER_WORKER:
                break
        while pending:
            task, future = pending.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:
                raise ParallelError(f"a worker process died while compressing (at tensor {task.name!r}): killed, "
                                    "or out of memory; nothing was written") from None
            except WeightzipError as error:
                raise ParallelError(f"tensor {task.name!r}: {error}") from None
            except Exception as error:  # noqa: BLE001  (any failure in a worker ends the run with its reason)
                raise ParallelError(f"a worker failed on tensor {task.name!r}: {type(error).__name__}: "
                                    f"{error}") from None
            following = next(queue, None)
            if following is not None:
                pending.append((following, executor.submit(function, following, *arguments)))
            yield result
    finally:
        for _, future in pending:
            future.cancel()
        executor.shutdown(wait=True, cancel_futures=True)


def _dask_map(function, tasks, arguments, scheduler: str) -> Iterator:
    try:
        from distributed import Client
    except ImportError:
        raise ParallelError("--scheduler needs Dask distributed: pip install 'weightzip[parallel]'") from None
    try:
        client = Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError) as error:
        raise ParallelError(f"the Dask scheduler at {scheduler} did not answer within {CONNECT_TIMEOUT_S} s "
                            f"({type(error).__name__})") from None
    except ValueError as error:
        raise ParallelError(f"{scheduler!r} is not a Dask scheduler address ({error})") from None
    pending: collections.deque = collections.deque()
    try:
        workers = max(1, sum(client.nthreads().values()))
        queue = iter(tasks)

        def submit(task):
            return client.submit(function, task, *arguments, pure=False)

        for task in queue:
            pending.append((task, submit(task)))
            if len(pending) >= workers * TASKS_PER_WORKER:
                break
        while pending:
            task, future = pending.popleft()
            try:
                result = future.result()
            except WeightzipError as error:
                raise ParallelError(f"tensor {task.name!r}: {error}") from None
            except Exception as error:  # noqa: BLE001  (KilledWorker, a lost scheduler, a failed task)
                raise ParallelError(f"the cluster failed on tensor {task.name!r}: {type(error).__name__}: "
                                    f"{error}") from None
            following = next(queue, None)
            if following is not None:
                pending.append((following, submit(following)))
            yield result
    finally:
        for _, future in pending:
            future.cancel()
        client.close()
