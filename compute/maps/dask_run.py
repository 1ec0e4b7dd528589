"""Whole-region runs block by block on a Dask distributed cluster (``--dask local|tcp://host:8786``).

The caller is the one writer: tasks get small arguments (absolute paths on a file system every
worker sees, windows, model folders), read their own input, run the model and send back an array;
the caller writes each into the output as it arrives. A task computes exactly what the in-process
run computes for that block, so the output does not depend on where (or in which order) it ran.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from slidemap.errors import InputError

LOCAL_WORKERS = 2


def local_cluster(workers: int | None = None) -> Any:
    from dask.distributed import LocalCluster

    cores = os.cpu_count() or 1
    n = workers or min(LOCAL_WORKERS, cores)
    # One task at a time per worker process, and TensorFlow in each gets its share of the cores
    # (by default every process would start a thread per core, and n processes fight over them).
    threads = str(max(1, cores // n))
    return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                        env={"SLIDEMAP_TF_THREADS": threads, "OMP_NUM_THREADS": threads})


def check_address(address: str | None) -> None:
    """A one-line InputError for an address that is neither ``local`` nor a scheduler URL."""
    if address is not None and address != "local" and not str(address).startswith(("tcp://", "tls://", "ucx://", "inproc://")):
        raise InputError(f"--dask {address!r}: give `local` or a scheduler address such as tcp://host:8786")


@contextlib.contextmanager
def dask_client(address: Any, workers: int | None = None) -> Iterator[Any]:
    """A ``dask.distributed.Client`` for ``address``: ``local`` (a LocalCluster of ``workers``
    processes), a scheduler address (``tcp://``, ``tls://``), or an existing Client (left open)."""
    from dask.distributed import Client

    if isinstance(address, Client):
        yield address
        return
    text = str(address or "").strip()
    if text == "local":
        cluster = local_cluster(workers)
        client = Client(cluster)
        try:
            client.wait_for_workers(len(cluster.workers), timeout=300)
            yield client
        finally:
            client.close()
            cluster.close()
        return
    check_address(text)
    try:
        client = Client(text, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise InputError(f"--dask {text}: no scheduler answers there ({type(exc).__name__}); start one with "
                         "`dask scheduler` (and `dask worker ADDRESS`) or use --dask local") from None
    try:
        yield client
    finally:
        client.close()


def run_tasks(
    client: Any,
    fn: Callable[..., Any],
    tasks: Sequence[tuple],
    progress: bool = True,
    desc: str = "blocks",
) -> Iterator[Any]:
    """``fn(*task)`` for every task on the cluster; results as they complete (any order)."""
    from dask.distributed import as_completed
    from tqdm.auto import tqdm

    futures = [client.submit(fn, *task, pure=False) for task in tasks]
    try:
        for fut in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="block", leave=False,
                        disable=not progress):
            yield fut.result()
    finally:
        for fut in futures:
            fut.release()
