"""The block engine: model outputs computed once, at the model's own resolution, block by block.

A model (U-Net detector on the imagery grid, susceptibility model on the analysis grid) never
sees tile pixels. The native grid is cut into square blocks (256 x 256 cells by default); a
block is computed from its input window plus the model's halo (read boundless, NaN outside the
raster, so a block at the region edge sees exactly what a whole-region run would see), and the
inner block is stored as one float32 ``.npy`` under::

    STORE/L0/<row>_<col>.npy          native blocks
    STORE/L<k>/<row>_<col>.npy        overview blocks: 2^k x 2^k native blocks, NaN-mean pooled

where ``STORE = REGION/cache/blocks/<layer>/<model_version>/<input fingerprint>-b<block size>[-<layout>]``:
everything a block is made from names its folder, and ``STORE/store.json`` repeats it and is
checked when an engine opens the store. Blocks never change once written (writes are atomic),
so a new model version or re-prepared inputs get a new folder and never mix with old results.
A block is computed from the input file the engine was opened for: if the file changes while a
block is read (its fingerprint differs after the read), nothing is stored and
:class:`InputChanged` is raised. Overview blocks are persisted only when all the native blocks
under them exist; a partial overview is assembled on the fly and marked as partial. A store that
cannot be written (read-only or full disk) keeps new blocks in a small in-memory LRU instead,
logged once.

rio-tiler's XarrayReader has no buffer/padding, so the halo is this module's job: tiles are
rendered from :meth:`BlockEngine.mosaic`, an in-memory raster made of whole stored blocks.

Blocks without waste: a runner may ask for blocks several base blocks wide (``ModelRunner.block_factor``:
the detector, 3, runs one network pass over block + halo, so a 768-px block costs 896 x 896 network pixels instead of
twenty-five overlapping 256-px tiles) and for the raster's edge to be mirrored rather than NaN-filled
(``edge="reflect"``: the whole-image detector reflect-pads too, and edge blocks then only cover the
raster's cells). How a runner cuts a block (``ModelRunner.layout``) is part of the store's identity.

Reads without waste: each worker thread keeps its own open dataset (GDAL handles are per thread, so
no global lock); the blocks one request asks for are read as one union window, and decoded windows
stay in a small LRU (:class:`WindowCache`) that later blocks (and their halos) are cut from.

Inference runs in one bounded :class:`InferenceExecutor`: single flight per block (concurrent
requests for the same block share one computation), admission by the expected wait (the
measured seconds per block times the queue length: beyond ``max_wait_s`` new blocks are refused
and :class:`QueueFull` is raised, which the server answers with 503 + Retry-After at once), and
queued blocks that nobody waits for any more (the client went away) are dropped before they run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from slidemap.compute.region.grid import Grid
from slidemap.compute.region.raster_io import atomic_path
from slidemap.errors import BuildError

log = logging.getLogger(__name__)

BLOCK_SIZE = 256
MEMORY_BLOCKS = 64  # blocks kept in memory when the store cannot be written (16 MiB at 256 x 256)
WINDOW_CACHE_BYTES = 64 << 20  # decoded input windows kept per engine (a union window up to half of it)
# A request's blocks are read as one window when it is at most this much larger than their own windows
# (scattered blocks are read one by one rather than through a mostly unused rectangle).
UNION_SLACK = 2.0


class QueueFull(Exception):
    """The inference queue is full; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 2) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ComputeTimeout(Exception):
    """Blocks did not finish within the request's wait limit."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ComputeCancelled(Exception):
    """Nobody waits for the blocks any more (the client went away); queued work was dropped."""


class InputChanged(Exception):
    """The input raster changed while a block was computed from it; nothing was stored."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InputUnreadable(BuildError):
    """An input raster the engine needs cannot be read (missing, truncated, corrupt)."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"{path}: unreadable ({detail}); re-run `slidemap prepare` on this region")
        self.path = Path(path)
        self.detail = detail


def file_fingerprint(path: Path) -> str:
    """Cheap identity of a file (name, size, mtime, inode): changes whenever it is rewritten.

    ``prepare`` writes through a temporary file and a rename, so a rebuilt input is a new inode
    even when its size and timestamp happen to match.
    """
    st = os.stat(path)
    import hashlib

    return hashlib.sha256(f"{Path(path).name}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}".encode()).hexdigest()[:12]


def short_error(exc: BaseException, limit: int = 200) -> str:
    """First line of an exception's message, cut at a word boundary (an OSError: its reason only)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror  # the caller names the file or folder; the full path would leak it
    text = (str(exc).splitlines() or [""])[0] or type(exc).__name__
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " ..."


@dataclass
class Timings:
    """Seconds spent per stage while computing blocks (summed over blocks)."""

    read: float = 0.0
    halo: float = 0.0
    model: float = 0.0
    store: float = 0.0
    blocks: int = 0

    def add(self, other: Timings) -> None:
        self.read += other.read
        self.halo += other.halo
        self.model += other.model
        self.store += other.store
        self.blocks += other.blocks


@dataclass(frozen=True)
class ModelRunner:
    """What the engine needs from a model.

    ``run(stack)`` gets float32 ``[bands, h + 2*halo, w + 2*halo]`` in physical units (NaN outside
    the raster and at nodata) and returns float32 ``[h, w]`` for the inner cells.

    With ``edge="reflect"`` the stack is the block's cells inside the raster (edge blocks are
    smaller) plus the halo, mirrored where it falls outside the raster, and ``run`` returns those
    cells only; the engine fills the rest of the block with NaN.
    """

    version: str
    halo: int
    band_indexes: tuple[int, ...]  # 1-based bands of the input raster, in the model's order
    run: Callable[[np.ndarray], np.ndarray]
    edge: str = "nan"  # "nan" | "reflect" (see above)
    layout: str = ""  # how the model cuts a block (store identity: a new layout never reuses old blocks)
    block_factor: int = 1  # blocks this many base blocks (the server's --block-size) on a side


def detector_runner(detector, band_indexes: Sequence[int]) -> ModelRunner:
    """Adapt ``load_detector`` output.

    A detector with ``predict_tile`` runs one network pass over block + halo (mirrored at the raster
    edge, as the whole-image path pads) on blocks ``detector.block_factor`` base blocks wide; otherwise ``predict``
    tiles the padded window itself and we crop the halo.
    """
    halo = int(detector.halo)
    one_pass = getattr(detector, "predict_tile", None)

    def crop(out: np.ndarray) -> np.ndarray:
        out = np.asarray(out, dtype=np.float32)
        return out[halo:-halo, halo:-halo] if halo else out

    if one_pass is not None:
        return ModelRunner(str(detector.version), halo, tuple(band_indexes), lambda s: crop(one_pass(s)),
                           edge="reflect", layout=f"pass1-h{halo}", block_factor=int(getattr(detector, "block_factor", 1)))
    return ModelRunner(str(detector.version), halo, tuple(band_indexes), lambda s: crop(detector.predict(s)))


def susceptibility_runner(model, band_indexes: Sequence[int]) -> ModelRunner:
    """Adapt ``load_susceptibility`` output: ``predict_block`` already returns the inner cells."""

    def run(stack: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_block(stack), dtype=np.float32)

    return ModelRunner(str(model.version), int(model.halo), tuple(band_indexes), run)


# ---- the executor -----------------------------------------------------------------------------


@dataclass(eq=False)
class _Job:
    key: Hashable
    future: Future
    cost_key: Hashable = None  # which model: blocks of one model cost about the same
    waiters: int = 0
    started: bool = False


@dataclass
class Ticket:
    """The blocks one request waits for. ``release()`` when done or gone (idempotent)."""

    executor: InferenceExecutor
    jobs: dict[Hashable, _Job]
    rejected: list[Hashable]
    _released: bool = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.executor._release(list(self.jobs.values()))


class InferenceExecutor:
    """One bounded worker pool for all model inference, with single flight per block key.

    Admission by expected wait: every job's cost is the measured seconds per block of its model
    (an exponential moving average; ``prior_block_s`` until a block of that model has run), and
    the queue's expected wait is the cost of the queued jobs (half for running ones) over the
    workers. A request's new blocks are accepted while that wait stays within ``max_wait_s`` and
    the queue under ``max_pending`` (an idle executor always takes one); the rest come back as
    rejected (a partial tile). A request that would wait longer than ``max_wait_s`` for the blocks
    it joins, or that gets no block at all, is refused with :class:`QueueFull` at once.
    """

    def __init__(
        self,
        workers: int = 1,
        max_pending: int = 64,
        retry_after: int = 2,
        max_wait_s: float = math.inf,
        prior_block_s: float = 2.0,
    ) -> None:
        self.workers = max(1, workers)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="slidemap-infer")
        self._lock = threading.Lock()
        self._jobs: dict[Hashable, _Job] = {}  # in submission order: the order the pool runs them
        self.max_pending = max_pending
        self.retry_after = retry_after
        self.max_wait_s = max_wait_s
        self.prior_block_s = prior_block_s
        self.costs: dict[Hashable, float] = {}  # seconds per block by model (moving average)
        self.dropped = 0  # queued blocks dropped because nobody waited for them any more
        self.rejected = 0  # blocks refused by admission
        self.refused = 0  # requests refused (QueueFull)
        self._closed = False

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._jobs)

    @property
    def block_seconds(self) -> float | None:
        """The largest measured seconds per block over the models (None before any ran)."""
        return max(self.costs.values()) if self.costs else None

    def waiting(self) -> int:
        """Requests waiting, summed over the blocks in flight (a request waiting on 3 blocks counts 3)."""
        with self._lock:
            return sum(j.waiters for j in self._jobs.values())

    def estimated_wait(self) -> float:
        with self._lock:
            return self._wait_locked()

    def _cost(self, cost_key: Hashable) -> float:
        return self.costs.get(cost_key, self.prior_block_s)

    def _wait_locked(self, until: _Job | None = None) -> float:
        """Seconds until the queue has run (up to and including ``until``)."""
        total = 0.0
        for job in self._jobs.values():
            total += self._cost(job.cost_key) * (0.5 if job.started else 1.0)
            if job is until:
                break
        return total / self.workers

    def submit(self, keys: Sequence[Hashable], compute: Callable[[list[Hashable]], dict[Hashable, object]],
               cost_key: Hashable = None) -> Ticket:
        """A ticket for ``keys`` (see the class docstring for admission). ``compute([key])`` runs on
        the pool and returns ``{key: result}``; ``cost_key`` names the model the blocks are of."""
        jobs: dict[Hashable, _Job] = {}
        created: list[_Job] = []
        with self._lock:
            if self._closed:
                raise QueueFull("the server is shutting down", self.retry_after)
            new = []
            for key in dict.fromkeys(keys):
                job = self._jobs.get(key)
                if job is not None:
                    jobs[key] = job
                else:
                    new.append(key)
            wait = max((self._wait_locked(job) for job in jobs.values()), default=0.0)
            room = self.max_pending - len(self._jobs)
            per_block = self._cost(cost_key) / self.workers
            if math.isfinite(self.max_wait_s):
                queue = self._wait_locked()
                room = min(room, math.floor((self.max_wait_s - queue) / max(per_block, 1e-9) + 1e-9))
            if not self._jobs:
                room = max(room, 1)  # an idle executor always makes progress
            room = max(0, room)
            accepted, rejected = new[:room], new[room:]
            if accepted:
                wait = max(wait, self._wait_locked() + len(accepted) * per_block)
            if (new and not accepted and not jobs) or (jobs and wait > self.max_wait_s):
                self.refused += 1
                self.rejected += len(new)
                raise QueueFull(
                    f"inference queue full ({len(self._jobs)} blocks pending, about {max(wait, self._wait_locked()):.0f} s "
                    f"of work; limits {self.max_pending} blocks, {self.max_wait_s:g} s); retry shortly",
                    self._retry_after(max(wait, self._wait_locked())),
                )
            self.rejected += len(rejected)
            for job in jobs.values():
                job.waiters += 1
            for key in accepted:
                job = _Job(key, Future(), cost_key, waiters=1)
                self._jobs[key] = job
                jobs[key] = job
                created.append(job)
        for job in created:
            self._pool.submit(self._run, job, compute)
        return Ticket(self, jobs, rejected)

    def _retry_after(self, wait: float) -> int:
        return int(min(60, max(self.retry_after, math.ceil(wait))))

    def _release(self, jobs: Iterable[_Job]) -> None:
        with self._lock:
            for job in jobs:
                job.waiters -= 1
                if job.waiters <= 0 and not job.started and self._jobs.get(job.key) is job:
                    del self._jobs[job.key]  # nobody waits: drop it before it runs
                    job.future.cancel()
                    self.dropped += 1

    def _run(self, job: _Job, compute: Callable[[list[Hashable]], dict[Hashable, object]]) -> None:
        with self._lock:
            if self._jobs.get(job.key) is not job:
                return  # dropped while queued
            job.started = True
        t0 = time.perf_counter()
        result: object = None
        error: BaseException | None = None
        try:
            result = compute([job.key]).get(job.key)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
            if not isinstance(exc, InputChanged):
                log.exception("block computation failed")
            error = exc
        elapsed = time.perf_counter() - t0
        with self._lock:
            if self._jobs.get(job.key) is job:
                del self._jobs[job.key]
            if error is None and isinstance(result, Timings) and result.blocks:
                old = self.costs.get(job.cost_key)
                self.costs[job.cost_key] = elapsed if old is None else 0.7 * old + 0.3 * elapsed
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
            self._jobs.clear()
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(ComputeCancelled("the server is shutting down"))
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class EnsureResult:
    requested: int = 0
    computed: int = 0
    missing: list[tuple[int, int]] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)


def _pool2(a: np.ndarray) -> np.ndarray:
    """2 x 2 NaN-mean pooling of an even-sized array (all-NaN cells stay NaN, quietly)."""
    h, w = a.shape
    v = a.reshape(h // 2, 2, w // 2, 2)
    valid = np.isfinite(v)
    total = np.where(valid, v, 0.0).sum(axis=(1, 3), dtype=np.float64)
    count = valid.sum(axis=(1, 3))
    out = np.full(total.shape, np.nan, dtype=np.float32)
    np.divide(total, count, out=out, where=count > 0, casting="unsafe")
    return out


Win = tuple[int, int, int, int]  # row_off, col_off, height, width (may reach outside the raster)


def _contains(outer: Win, inner: Win) -> bool:
    return (outer[0] <= inner[0] and outer[1] <= inner[1] and inner[0] + inner[2] <= outer[0] + outer[2]
            and inner[1] + inner[3] <= outer[1] + outer[3])


class WindowCache:
    """Decoded input windows (``[bands, h, w]``, NaN outside the raster), least recently used
    dropped past ``max_bytes``; any window inside a cached one is cut from it without a read."""

    def __init__(self, max_bytes: int = WINDOW_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Win, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, win: Win) -> np.ndarray | None:
        with self._lock:
            for key, arr in reversed(self._items.items()):
                if _contains(key, win):
                    self._items.move_to_end(key)
                    self.hits += 1
                    r, c = win[0] - key[0], win[1] - key[1]
                    return arr[:, r : r + win[2], c : c + win[3]].copy()
            self.misses += 1
            return None

    def put(self, win: Win, arr: np.ndarray) -> None:
        if arr.nbytes > self.max_bytes:
            return
        with self._lock:
            self._items[win] = arr
            self._items.move_to_end(win)
            total = sum(a.nbytes for a in self._items.values())
            while total > self.max_bytes and len(self._items) > 1:
                _, dropped = self._items.popitem(last=False)
                total -= dropped.nbytes


class BlockEngine:
    """Blocks of one model output on its native grid, computed on demand and stored once."""

    def __init__(
        self,
        name: str,
        source: Path,
        grid: Grid,
        runner: ModelRunner,
        store: Path,
        executor: InferenceExecutor,
        block_size: int = BLOCK_SIZE,
        wait_timeout: float = 300.0,
        fingerprint: str | None = None,
    ) -> None:
        self.name = name
        self.source = Path(source)
        self.grid = grid
        self.runner = runner
        self.store = Path(store)
        self.executor = executor
        self.block_size = block_size
        self.wait_timeout = wait_timeout
        # The input file this engine's blocks are made from; None: whatever is there (tests).
        self.fingerprint = fingerprint
        self.n_rows = math.ceil(grid.height / block_size)
        self.n_cols = math.ceil(grid.width / block_size)
        self.max_level = max(0, math.ceil(math.log2(max(self.n_rows, self.n_cols, 1))))
        self.model_calls = 0  # blocks the model actually ran on (tests count it)
        self.timings = Timings()
        self._timings_lock = threading.Lock()
        self._local = threading.local()  # per worker thread: its own open dataset (GDAL handles are per thread)
        self.windows = WindowCache()
        self._unions: list[tuple[Win, threading.Lock]] = []  # windows requests asked to read whole
        self._unions_lock = threading.Lock()
        self.reads = 0  # input reads that went to the file (tests and benchmarks count them)
        self._memory: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._memory_lock = threading.Lock()
        self.store_error: str | None = None  # set when the store cannot be written
        self._check_store()

    # ---- identity ---------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        return {
            "layer": self.name, "model_version": self.runner.version, "source": self.source.name,
            "source_fingerprint": self.fingerprint, "block_size": self.block_size, "halo": self.runner.halo,
            "edge": self.runner.edge, "layout": self.runner.layout,
            "band_indexes": list(self.runner.band_indexes), "grid": [self.grid.width, self.grid.height,
                                                                     list(self.grid.transform)[:6]],
        }

    def _check_store(self) -> None:
        """The store's ``store.json`` must describe this engine; a store that does not is cleared."""
        meta = self.store / "store.json"
        want = json.loads(json.dumps(self.identity()))
        try:
            have = json.loads(meta.read_text())
        except FileNotFoundError:
            have = None
        except (OSError, ValueError):
            have = {}
        if have == want:
            return
        if have is not None:
            import shutil

            log.warning("%s: block store does not match its engine (%s); clearing it", self.store, meta.name)
            for sub in self.store.glob("L*"):
                shutil.rmtree(sub, ignore_errors=True)
        try:
            with atomic_path(meta) as tmp:
                tmp.write_text(json.dumps(want, indent=1))
        except OSError as exc:
            self._store_failed(exc)

    def _store_failed(self, exc: OSError) -> None:
        if self.store_error is None:
            self.store_error = f"block store not writable ({short_error(exc)}); blocks are kept in memory only"
            log.warning("%s: %s", self.store, self.store_error)

    # ---- geometry ---------------------------------------------------------------------------
    def level_grid(self, level: int) -> Grid:
        """The grid of overview ``level`` (cells 2^level times coarser, same origin)."""
        f = 2**level
        t = self.grid.transform
        transform = Affine(t.a * f, t.b, t.c, t.d, t.e * f, t.f)
        return Grid(self.grid.crs, transform, math.ceil(self.grid.width / f), math.ceil(self.grid.height / f))

    def level_for_resolution(self, res: float) -> int:
        """Coarsest level whose cells are still no coarser than ``res`` (native CRS units)."""
        native = self.grid.res[0]
        if res <= native:
            return 0
        return int(min(self.max_level, math.floor(math.log2(res / native) + 1e-9)))

    def blocks_for_bounds(self, bounds: tuple[float, float, float, float], level: int = 0) -> list[tuple[int, int]]:
        """Block (row, col) at ``level`` intersecting ``bounds`` (native CRS), clipped to the grid."""
        g = self.level_grid(level)
        size = self.block_size * g.res[0]
        left, bottom, right, top = bounds
        x0, y0 = g.transform.c, g.transform.f
        c0 = max(0, math.floor((left - x0) / size))
        c1 = min(math.ceil(g.width / self.block_size) - 1, math.floor((right - x0) / size))
        r0 = max(0, math.floor((y0 - top) / size))
        r1 = min(math.ceil(g.height / self.block_size) - 1, math.floor((y0 - bottom) / size))
        return [(r, c) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]

    def native_children(self, level: int, row: int, col: int) -> list[tuple[int, int]]:
        f = 2**level
        return [
            (r, c)
            for r in range(row * f, min((row + 1) * f, self.n_rows))
            for c in range(col * f, min((col + 1) * f, self.n_cols))
        ]

    # ---- store ------------------------------------------------------------------------------
    def path(self, level: int, row: int, col: int) -> Path:
        return self.store / f"L{level}" / f"{row}_{col}.npy"

    def has(self, level: int, row: int, col: int) -> bool:
        with self._memory_lock:
            if (level, row, col) in self._memory:
                return True
        return self.path(level, row, col).is_file()

    def _save(self, level: int, row: int, col: int, data: np.ndarray) -> None:
        data = data.astype(np.float32, copy=False)
        if self.store_error is None:
            try:
                with atomic_path(self.path(level, row, col), suffix=".npy") as tmp:
                    with open(tmp, "wb") as fh:
                        np.save(fh, data)
                return
            except OSError as exc:
                self._store_failed(exc)
        with self._memory_lock:
            self._memory[(level, row, col)] = data
            self._memory.move_to_end((level, row, col))
            while len(self._memory) > MEMORY_BLOCKS:
                self._memory.popitem(last=False)

    def load(self, level: int, row: int, col: int) -> np.ndarray | None:
        """A stored block, or None when it is absent or unusable (a corrupt file is removed)."""
        with self._memory_lock:
            arr = self._memory.get((level, row, col))
            if arr is not None:
                return arr
        path = self.path(level, row, col)
        try:
            arr = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("%s: unusable block (%s); computing it again", path, short_error(exc))
            arr = None
        if arr is None or arr.shape != (self.block_size, self.block_size) or arr.dtype != np.float32:
            try:
                path.unlink()
            except OSError:
                pass
            return None
        return arr

    def missing_native(self, blocks: Iterable[tuple[int, int]], level: int) -> list[tuple[int, int]]:
        """Native blocks still to compute before ``blocks`` at ``level`` can be rendered complete."""
        out: list[tuple[int, int]] = []
        for r, c in blocks:
            if level and self.has(level, r, c):
                continue
            out.extend(k for k in self.native_children(level, r, c) if not self.has(0, *k))
        return out

    # ---- compute ----------------------------------------------------------------------------
    def _inner(self, row: int, col: int) -> Win:
        """The block's cells inside the raster."""
        b = self.block_size
        return (row * b, col * b, max(0, min(b, self.grid.height - row * b)), max(0, min(b, self.grid.width - col * b)))

    def _read_window(self, row: int, col: int) -> Win:
        """The input window a block is computed from (NaN-edge runners: the whole block + halo)."""
        h, b = self.runner.halo, self.block_size
        if self.runner.edge == "reflect":
            r0, c0, ih, iw = self._inner(row, col)
            top, left = max(0, r0 - h), max(0, c0 - h)
            return (top, left, min(self.grid.height, r0 + ih + h) - top, min(self.grid.width, c0 + iw + h) - left)
        return (row * b - h, col * b - h, b + 2 * h, b + 2 * h)

    def _dataset(self) -> Any:
        ds = getattr(self._local, "ds", None)
        if ds is None or ds.closed:
            ds = self._local.ds = rasterio.open(self.source)
        return ds

    def _file_read(self, win: Win) -> np.ndarray:
        """Read ``win`` (boundless: NaN outside the raster, and at nodata) through this thread's dataset."""
        try:
            src = self._dataset()
            # boundless reads go through a warped VRT (several times slower): only where the window leaves the raster
            outside = win[0] < 0 or win[1] < 0 or win[0] + win[2] > src.height or win[1] + win[3] > src.width
            stack = src.read(list(self.runner.band_indexes), window=Window(win[1], win[0], win[3], win[2]),
                             boundless=outside, fill_value=np.nan if outside else None, out_dtype="float32")
            nodata = src.nodata
        except (rasterio.errors.RasterioError, OSError) as exc:
            ds = getattr(self._local, "ds", None)
            self._local.ds = None
            if ds is not None:
                ds.close()
            raise InputUnreadable(self.source, short_error(exc)) from exc
        if nodata is not None and not np.isnan(nodata):
            stack[stack == nodata] = np.nan
        self.reads += 1
        return stack

    def _window(self, win: Win) -> np.ndarray:
        """``win`` from the window cache, from a request's union window (read once, by whichever of
        its blocks gets here first), or from the file."""
        arr = self.windows.get(win)
        if arr is not None:
            return arr
        with self._unions_lock:
            union = next(((u, lock) for u, lock in self._unions if _contains(u, win)), None)
        if union is not None:
            u, lock = union
            with lock:  # the other blocks of the request wait for the one read
                arr = self.windows.get(win)
                if arr is not None:
                    return arr
                self.windows.put(u, self._file_read(u))
                with self._unions_lock:
                    self._unions = [x for x in self._unions if x[0] != u]
            arr = self.windows.get(win)
            if arr is not None:
                return arr
        arr = self._file_read(win)
        self.windows.put(win, arr)
        return arr.copy()

    def _plan_union(self, blocks: Sequence[tuple[int, int]]) -> Win | None:
        """One window covering the blocks' input windows, when it is not much larger than they are."""
        wins = [self._read_window(r, c) for r, c in blocks]
        if len(wins) < 2:
            return None
        r0, c0 = min(w[0] for w in wins), min(w[1] for w in wins)
        r1, c1 = max(w[0] + w[2] for w in wins), max(w[1] + w[3] for w in wins)
        area = (r1 - r0) * (c1 - c0)
        nbytes = area * 4 * len(self.runner.band_indexes)
        if area > UNION_SLACK * sum(w[2] * w[3] for w in wins) or nbytes > self.windows.max_bytes // 2:
            return None
        return (r0, c0, r1 - r0, c1 - c0)

    def _read_input(self, row: int, col: int, timings: Timings) -> np.ndarray:
        """Input of a block: its window plus the halo (NaN outside the raster, or mirrored there for
        ``edge="reflect"`` runners)."""
        t0 = time.perf_counter()
        win = self._read_window(row, col)
        stack = self._window(win)
        if self.fingerprint is not None:
            try:
                now = file_fingerprint(self.source)
            except OSError as exc:
                raise InputUnreadable(self.source, short_error(exc)) from exc
            if now != self.fingerprint:
                raise InputChanged(f"{self.source.name} changed while block {row},{col} was computed; retry")
        if self.runner.edge == "reflect":
            h = self.runner.halo
            r0, c0, ih, iw = self._inner(row, col)
            pads = ((0, 0), (h - (r0 - win[0]), r0 + ih + h - win[0] - win[2]),
                    (h - (c0 - win[1]), c0 + iw + h - win[1] - win[3]))
            if any(p for pair in pads for p in pair):
                mode = "reflect" if min(stack.shape[1:]) > 1 else "edge"
                stack = np.pad(stack, pads, mode=mode)
        t1 = time.perf_counter()
        inner = self._inner(row, col)
        timings.read += t1 - t0
        # The halo is the part of the input outside the inner block; charge it pro rata.
        share = 1.0 - (inner[2] * inner[3]) / float(max(1, stack.shape[1] * stack.shape[2]))
        timings.halo += (t1 - t0) * share
        timings.read -= (t1 - t0) * share
        return stack

    def _compute(self, keys: list[Hashable]) -> dict[Hashable, object]:
        total = Timings()
        done: dict[Hashable, object] = {}
        for key in keys:
            _, row, col = key  # (store, row, col)
            timings = Timings()
            if self.has(0, row, col):  # finished by an earlier flight
                done[key] = timings
                continue
            stack = self._read_input(row, col, timings)
            t0 = time.perf_counter()
            out = self.runner.run(stack)
            t1 = time.perf_counter()
            self.model_calls += 1
            b = self.block_size
            if self.runner.edge == "reflect":
                _, _, ih, iw = self._inner(row, col)
                if out.shape != (ih, iw):
                    raise ValueError(f"model returned {out.shape} for {ih}x{iw} cells (halo {self.runner.halo})")
                full = np.full((b, b), np.nan, dtype=np.float32)
                full[:ih, :iw] = out
                out = full
            if out.shape != (b, b):
                raise ValueError(f"model returned {out.shape} for a {b}x{b} block (halo {self.runner.halo})")
            out = np.array(out, dtype=np.float32)
            # Cells outside the grid stay NaN whatever the model says.
            out[max(0, self.grid.height - row * b):, :] = np.nan
            out[:, max(0, self.grid.width - col * b):] = np.nan
            self._save(0, row, col, out)
            timings.model += t1 - t0
            timings.store += time.perf_counter() - t1
            timings.blocks += 1
            done[key] = timings
            total.add(timings)
        with self._timings_lock:
            self.timings.add(total)
        return done

    def ensure(
        self,
        blocks: Sequence[tuple[int, int]],
        budget: int | None = None,
        cancel: threading.Event | None = None,
    ) -> EnsureResult:
        """Compute the native ``blocks`` not yet stored (at most ``budget`` of them, and no more than
        the executor admits); wait for them. Blocks not computed come back in ``missing``.

        ``cancel`` set while waiting (the client went away) releases the blocks: queued ones that
        nobody else waits for are dropped, and :class:`ComputeCancelled` is raised.
        """
        todo = [k for k in dict.fromkeys(blocks) if not self.has(0, *k)]
        result = EnsureResult(requested=len(todo))
        if budget is not None and len(todo) > budget:
            result.missing = todo[budget:]
            todo = todo[:budget]
        if not todo:
            return result
        keys = [(str(self.store), r, c) for r, c in todo]
        union = self._plan_union(todo)
        if union is not None:
            with self._unions_lock:
                self._unions.append((union, threading.Lock()))
        ticket = self.executor.submit(keys, self._compute, cost_key=(self.name, self.runner.version))
        try:
            result.missing = [(r, c) for _, r, c in ticket.rejected] + result.missing
            futures = [job.future for job in ticket.jobs.values()]
            deadline = time.monotonic() + self.wait_timeout
            pending = set(futures)
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ComputeTimeout(
                        f"{self.name}: blocks still computing after {self.wait_timeout:.0f} s; retry shortly"
                    )
                if cancel is not None and cancel.is_set():
                    raise ComputeCancelled(f"{self.name}: request cancelled")
                done, pending = wait_futures(pending, timeout=min(left, 0.1 if cancel is not None else left),
                                             return_when=FIRST_EXCEPTION)
                for fut in done:
                    if fut.cancelled():
                        raise ComputeCancelled(f"{self.name}: block computation was dropped")
                    exc = fut.exception()
                    if exc is not None:
                        raise exc
            for fut in futures:
                t = fut.result()
                if isinstance(t, Timings):
                    result.timings.add(t)
            result.computed = len(futures)
        finally:
            ticket.release()
            if union is not None:  # not read (all blocks were there, or refused): forget it
                with self._unions_lock:
                    self._unions = [x for x in self._unions if x[0] != union]
        return result

    # ---- overviews and mosaics --------------------------------------------------------------
    def block(self, level: int, row: int, col: int) -> tuple[np.ndarray, bool]:
        """Block array at ``level`` (NaN where not computed) and whether it is complete."""
        stored = self.load(level, row, col)
        if stored is not None:
            return stored, True
        b = self.block_size
        if level == 0:
            return np.full((b, b), np.nan, dtype=np.float32), False
        child = np.full((2 * b, 2 * b), np.nan, dtype=np.float32)
        complete = True
        for dr in (0, 1):
            for dc in (0, 1):
                r, c = 2 * row + dr, 2 * col + dc
                if r * 2 ** (level - 1) >= self.n_rows or c * 2 ** (level - 1) >= self.n_cols:
                    continue  # beyond the grid: NaN by definition, not missing
                arr, ok = self.block(level - 1, r, c)
                complete &= ok
                child[dr * b : (dr + 1) * b, dc * b : (dc + 1) * b] = arr
        out = _pool2(child)
        if complete:
            self._save(level, row, col, out)
        return out, complete

    def mosaic(self, bounds: tuple[float, float, float, float], level: int) -> tuple[np.ndarray, Grid, bool]:
        """Whole blocks at ``level`` covering ``bounds`` (native CRS): array, its grid, completeness."""
        blocks = self.blocks_for_bounds(bounds, level)
        g = self.level_grid(level)
        b = self.block_size
        if not blocks:
            return np.full((1, 1), np.nan, dtype=np.float32), g.window_grid(0, 0, 1, 1), True
        r0 = min(r for r, _ in blocks)
        c0 = min(c for _, c in blocks)
        r1 = max(r for r, _ in blocks)
        c1 = max(c for _, c in blocks)
        out = np.full(((r1 - r0 + 1) * b, (c1 - c0 + 1) * b), np.nan, dtype=np.float32)
        complete = True
        for r, c in blocks:
            arr, ok = self.block(level, r, c)
            complete &= ok
            out[(r - r0) * b : (r - r0 + 1) * b, (c - c0) * b : (c - c0 + 1) * b] = arr
        return out, g.window_grid(r0 * b, c0 * b, out.shape[0], out.shape[1]), complete

    def value_at(self, row: int, col: int, budget: int | None = 1, cancel: threading.Event | None = None) -> float:
        """The model output at native cell (row, col), computing its block if needed."""
        b = self.block_size
        key = (row // b, col // b)
        result = self.ensure([key], budget=budget, cancel=cancel)
        if result.missing:
            raise QueueFull(f"{self.name}: no room in the inference queue for this point; retry shortly",
                            self.executor.retry_after)
        arr, _ = self.block(0, *key)
        return float(arr[row % b, col % b])
