"""Where seeding tasks run: in this process, a pool of local worker processes, or a Dask cluster.

Results come back as tasks finish (largest tasks are submitted first, so the last ones to
finish are small), and this process alone consumes them: it is the one writer of an archive.

Pool workers start from a ``forkserver`` that has imported the rendering code once, not by
forking this process: here a model (TensorFlow's threads) may already be loaded, and a fork of a
threaded process can deadlock.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from slidemap.errors import InputError

PRELOAD = ["slidemap.server.seed", "slidemap.server.seed_read", "slidemap.server.service"]  # what each pool worker has imported before its first task


def default_workers() -> int:
    """The CPUs this process may run on (a container's or taskset's share, not the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def prestart(workers: int | None, dask: str | None) -> None:
    """Start the pool's forkserver now, before this process imports the rendering code itself, so
    the forkserver's imports (rio-tiler, rasterio: seconds) run beside this process's instead of
    after them. Nothing to do for one worker or a Dask cluster."""
    if dask or (workers or default_workers()) <= 1:
        return
    from multiprocessing import forkserver

    _forkserver_context()
    forkserver.ensure_running()


def _forkserver_context() -> Any:
    """The multiprocessing context pool workers start from: a forkserver that has imported PRELOAD."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


class Runner:
    """``runner.map(fn, jobs, desc, size)`` yields ``fn(job)`` for every job, as each finishes."""

    def __init__(self, workers: int | None, dask: str | None, progress: bool = True) -> None:
        if workers is not None and workers < 1:
            raise InputError(f"--workers {workers}: must be at least 1")
        self.workers = workers or default_workers()
        self.progress = progress
        self.client = None
        self.cluster = None
        self.pool = None
        if dask:
            from dask.distributed import Client, LocalCluster

            if dask == "local":
                n = workers or max(2, self.workers)
                self.cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
                self.client = Client(self.cluster)
                self.client.wait_for_workers(n, timeout=300)  # share the work from the first task on
            elif dask.startswith("tcp://"):
                self.client = Client(dask)
            else:
                raise InputError(f"--dask {dask!r}: use 'local' or tcp://scheduler:8786")

    @property
    def where(self) -> str:
        if self.client is not None:
            return "dask"
        return "in process" if self.workers == 1 else f"{self.workers} processes"

    def warm(self, fn: Callable[..., Any], *args: Any) -> None:
        """Start the worker processes now with ``fn(*args)`` (e.g. building their tile service), so
        their start-up overlaps this process's own instead of delaying the first task."""
        if self.client is None and self.workers > 1:
            pool = self._pool()
            self._warming = [pool.submit(fn, *args) for _ in range(self.workers)]

    def _pool(self):
        if self.pool is None:
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=_forkserver_context())
        return self.pool

    def map(self, fn: Callable[[Any], Any], jobs: Sequence[Any], desc: str,
            size: Callable[[Any], int] = lambda job: 1, unit: str = "task") -> Iterator[Any]:
        from tqdm import tqdm

        jobs = sorted(jobs, key=size, reverse=True)  # big first: the tail of the run is small tasks
        bar = tqdm(total=sum(size(j) for j in jobs), desc=desc, unit=unit, leave=False, disable=not self.progress)
        try:
            if self.client is not None:
                yield from self._dask(fn, jobs, size, bar)
            elif self.workers == 1 or len(jobs) <= 1:
                for job in jobs:
                    result = fn(job)
                    bar.update(size(job))
                    yield result
            else:
                yield from self._processes(fn, jobs, size, bar)
        finally:
            bar.close()

    def _processes(self, fn, jobs, size, bar) -> Iterator[Any]:
        from concurrent.futures import as_completed

        pool = self._pool()
        for fut in getattr(self, "_warming", []):
            fut.result()  # a worker that cannot even start fails here, with its own error
        self._warming = []
        futures = {pool.submit(fn, job): job for job in jobs}
        try:
            for fut in as_completed(futures):
                result = fut.result()
                bar.update(size(futures[fut]))
                yield result
        finally:
            for fut in futures:
                fut.cancel()  # after a failure: queued tasks never start

    def _dask(self, fn, jobs, size, bar) -> Iterator[Any]:
        from dask.distributed import as_completed

        futures = [self.client.submit(fn, job, pure=False) for job in jobs]
        index = {f.key: j for f, j in zip(futures, jobs)}
        try:
            for fut in as_completed(futures):
                result = fut.result()
                bar.update(size(index[fut.key]))
                yield result
        finally:
            for fut in futures:
                fut.cancel()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
