"""The block engine: model outputs computed once, at the model's own resolution, block by block.

A model (U-Net detector on the imagery grid, susceptibility model on the analysis grid) never
sees tile pixels. The native grid is cut into square blocks (256 x 256 cells by default); a
block is computed from its input window plus the model's halo (read boundless, NaN outside the
raster, so a block at the region edge sees exactly what a whole-region run would see), and the
inner block is stored as one float32 ``.npy`` under::

    STORE/L0/<row>_<col>.npy          native blocks
    STORE/L<k>/<row>_<col>.npy        overview blocks: 2^k x 2^k native blocks, NaN-mean pooled

where ``STORE = REGION/cache/blocks/<layer>/<model_version>/<inputs fingerprint>``. Blocks never
change once written (writes are atomic), so a new model version or re-prepared inputs get a new
folder and never mix with old results. Overview blocks are persisted only when all the native
blocks under them exist; a partial overview is assembled on the fly and marked as partial.

rio-tiler's XarrayReader has no buffer/padding, so the halo is this module's job: tiles are
rendered from :meth:`BlockEngine.mosaic`, an in-memory raster made of whole stored blocks.

Inference runs in one bounded :class:`InferenceExecutor`: single flight per block (concurrent
requests for the same block share one computation) and a pending-block limit beyond which
:class:`QueueFull` is raised (the server answers 503 with Retry-After).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from slidemap.compute.grid import Grid
from slidemap.compute.io import atomic_path

log = logging.getLogger(__name__)

BLOCK_SIZE = 256


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
    """

    version: str
    halo: int
    band_indexes: tuple[int, ...]  # 1-based bands of the input raster, in the model's order
    run: Callable[[np.ndarray], np.ndarray]


def detector_runner(detector, band_indexes: Sequence[int]) -> ModelRunner:
    """Adapt ``load_detector`` output: ``predict`` returns the whole padded window, we crop it."""
    halo = int(detector.halo)

    def run(stack: np.ndarray) -> np.ndarray:
        out = np.asarray(detector.predict(stack), dtype=np.float32)
        if halo:
            out = out[halo:-halo, halo:-halo]
        return out

    return ModelRunner(str(detector.version), halo, tuple(band_indexes), run)


def susceptibility_runner(model, band_indexes: Sequence[int]) -> ModelRunner:
    """Adapt ``load_susceptibility`` output: ``predict_block`` already returns the inner cells."""

    def run(stack: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_block(stack), dtype=np.float32)

    return ModelRunner(str(model.version), int(model.halo), tuple(band_indexes), run)


class InferenceExecutor:
    """One bounded worker pool for all model inference, with single flight per block key."""

    def __init__(self, workers: int = 1, max_pending: int = 64, retry_after: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="slidemap-infer")
        self._lock = threading.Lock()
        self._inflight: dict[Hashable, Future] = {}
        self.max_pending = max_pending
        self.retry_after = retry_after

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._inflight)

    def submit(
        self, keys: Sequence[Hashable], compute: Callable[[list[Hashable]], dict[Hashable, object]]
    ) -> dict[Hashable, Future]:
        """Futures for ``keys``; keys already in flight share the running computation.

        ``compute(new_keys)`` runs on the pool and returns ``{key: result}`` for the keys it was
        given (one call per request, so the model can batch over them).
        """
        futures: dict[Hashable, Future] = {}
        new: list[Hashable] = []
        with self._lock:
            for key in keys:
                if key in self._inflight:
                    futures[key] = self._inflight[key]
                else:
                    new.append(key)
            if new and len(self._inflight) + len(new) > self.max_pending:
                raise QueueFull(
                    f"inference queue full ({len(self._inflight)} blocks pending, limit {self.max_pending}); "
                    f"retry in {self.retry_after} s",
                    self.retry_after,
                )
            for key in new:
                fut: Future = Future()
                self._inflight[key] = fut
                futures[key] = fut
        if new:
            self._pool.submit(self._run, new, compute)
        return futures

    def _run(self, keys: list[Hashable], compute: Callable[[list[Hashable]], dict[Hashable, object]]) -> None:
        try:
            results = compute(keys)
            for key in keys:
                self._resolve(key, result=results.get(key))
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
            log.exception("block computation failed")
            for key in keys:
                self._resolve(key, error=exc)

    def _resolve(self, key: Hashable, result: object = None, error: BaseException | None = None) -> None:
        with self._lock:
            fut = self._inflight.pop(key, None)
        if fut is None or fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    def shutdown(self) -> None:
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
    ) -> None:
        self.name = name
        self.source = Path(source)
        self.grid = grid
        self.runner = runner
        self.store = Path(store)
        self.executor = executor
        self.block_size = block_size
        self.wait_timeout = wait_timeout
        self.n_rows = math.ceil(grid.height / block_size)
        self.n_cols = math.ceil(grid.width / block_size)
        self.max_level = max(0, math.ceil(math.log2(max(self.n_rows, self.n_cols, 1))))
        self.model_calls = 0  # blocks the model actually ran on (tests count it)
        self.timings = Timings()
        self._read_lock = threading.Lock()

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
        return self.path(level, row, col).is_file()

    def _save(self, level: int, row: int, col: int, data: np.ndarray) -> None:
        with atomic_path(self.path(level, row, col), suffix=".npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, data.astype(np.float32, copy=False))

    def load(self, level: int, row: int, col: int) -> np.ndarray:
        return np.load(self.path(level, row, col))

    def missing_native(self, blocks: Iterable[tuple[int, int]], level: int) -> list[tuple[int, int]]:
        """Native blocks still to compute before ``blocks`` at ``level`` can be rendered complete."""
        out: list[tuple[int, int]] = []
        for r, c in blocks:
            if level and self.has(level, r, c):
                continue
            out.extend(k for k in self.native_children(level, r, c) if not self.has(0, *k))
        return out

    # ---- compute ----------------------------------------------------------------------------
    def _read_input(self, row: int, col: int, timings: Timings) -> np.ndarray:
        """Input window of a block plus the halo, boundless (NaN outside the raster)."""
        h = self.runner.halo
        b = self.block_size
        t0 = time.perf_counter()
        window = Window(col * b - h, row * b - h, b + 2 * h, b + 2 * h)
        with self._read_lock, rasterio.open(self.source) as src:
            inner = Window(col * b, row * b, b, b).intersection(Window(0, 0, src.width, src.height))
            stack = src.read(list(self.runner.band_indexes), window=window, boundless=True,
                             fill_value=np.nan, out_dtype="float32")
            nodata = src.nodata
        t1 = time.perf_counter()
        if nodata is not None and not np.isnan(nodata):
            stack[stack == nodata] = np.nan
        timings.read += t1 - t0
        # The halo is the part of the read outside the inner block; charge it pro rata.
        share = 1.0 - (inner.width * inner.height) / float(window.width * window.height)
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
        with self._read_lock:
            self.timings.add(total)
        return done

    def ensure(self, blocks: Sequence[tuple[int, int]], budget: int | None = None) -> EnsureResult:
        """Compute the native ``blocks`` not yet stored (at most ``budget`` of them); wait for them."""
        todo = [k for k in dict.fromkeys(blocks) if not self.has(0, *k)]
        result = EnsureResult(requested=len(todo))
        if budget is not None and len(todo) > budget:
            result.missing = todo[budget:]
            todo = todo[:budget]
        if not todo:
            return result
        keys = [(str(self.store), r, c) for r, c in todo]
        futures = self.executor.submit(keys, self._compute)
        deadline = time.monotonic() + self.wait_timeout
        for key, fut in futures.items():
            try:
                t = fut.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout as exc:
                raise ComputeTimeout(
                    f"{self.name}: blocks still computing after {self.wait_timeout:.0f} s; retry shortly"
                ) from exc
            if isinstance(t, Timings):
                result.timings.add(t)
        result.computed = len(todo)
        return result

    # ---- overviews and mosaics --------------------------------------------------------------
    def block(self, level: int, row: int, col: int) -> tuple[np.ndarray, bool]:
        """Block array at ``level`` (NaN where not computed) and whether it is complete."""
        if self.has(level, row, col):
            return self.load(level, row, col), True
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

    def value_at(self, row: int, col: int, budget: int | None = 1) -> float:
        """The model output at native cell (row, col), computing its block if needed."""
        b = self.block_size
        key = (row // b, col // b)
        self.ensure([key], budget=budget)
        arr, _ = self.block(0, *key)
        return float(arr[row % b, col % b])
