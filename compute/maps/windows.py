"""Multi-scale window extraction for susceptibility models (numba, parallel over samples).

For each centre cell ``(r, c)`` a window of ``n`` cells per side is cut from the factor stack
``[factors, H, W]`` and resampled to ``out_size x out_size`` (12 for the paper's 12/17/22 scales).
One kernel serves training (sample cells), whole-region maps and per-tile serving, so a cell's
input is bit-identical whichever path asks for it.

Conventions (tested in ``tests/test_windows.py``):

* **Window placement.** A window of ``n`` cells starts ``(n - 1) // 2`` cells above/left of the
  centre cell, so odd windows are centred on the cell and even windows (12, 22) put the cell at
  index ``(n - 1) // 2`` (the upper-left cell of the central 2 x 2). With that rule the 12 and 22
  windows share one geometric centre (the lower-right corner of the cell); the 17 window is centred
  on the cell itself, half a cell away -- unavoidable when whole-cell windows of both parities mix.
* **Halo.** A window reaches ``(n - 1) // 2`` cells up/left and ``n // 2`` cells down/right, so the
  22-cell scale needs 11 cells of context: :func:`halo_for` gives it.
* **Resampling.** Area-weighted (the fraction of each source cell covered by an output cell, applied
  separably in rows and columns), i.e. GDAL's "average" with fractional cells: every source cell
  contributes in proportion to its area (bilinear would skip cells at 22 -> 12). A constant stays
  exactly constant, a ramp of cell values gives per output cell the exact mean of the ramp over its
  footprint, and the window mean is conserved. When ``n == out_size`` the window is copied.
* **Edges.** Cells outside the stack read as 0, i.e. the value nodata gets after normalisation
  (``factors.json``: NaN -> 0). That is the only rule under which the map, the per-tile server (whose
  halo beyond the region edge is NaN, hence 0) and training give the same input for the same cell.
  NaN cells inside the stack must already be 0: pass the normalised stack.

The output is one C-contiguous float32 array ``[N, factors, out, out, scales]`` written in place
(Keras ``Conv3D`` channels-last: the factors are the depth, the scales are the channels). Nothing is
allocated per sample (one scratch row buffer per thread per call); :func:`iter_windows` streams a
large set of centres through one reused output buffer. Interior windows take a separable,
bounds-check-free path; windows crossing the stack edge a checked one (same weights, same result).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numba
import numpy as np

MULTISCALE_SIZES: tuple[int, ...] = (12, 17, 22)
OUT_SIZE = 12
MAX_TAPS = 4  # source cells one output cell can touch along one axis (n / out + 2 at most)


def halo_for(sizes: Sequence[int]) -> int:
    """Cells of context a block needs around it for windows of ``sizes`` (11 for 22)."""
    return max(max(n // 2, (n - 1) // 2) for n in sizes)


def window_start(n: int) -> int:
    """Offset of the first window row/column relative to the centre cell (negative)."""
    return -((n - 1) // 2)


def area_weights(n: int, out_size: int = OUT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Sparse 1-D area weights mapping ``n`` source cells onto ``out_size`` cells.

    Returns ``(index, weight)`` of shape ``[out_size, MAX_TAPS]``: output cell ``i`` is
    ``sum_k weight[i, k] * src[index[i, k]]``; unused taps have weight 0 and index 0.
    Output cell ``i`` covers source interval ``[i * n / out, (i + 1) * n / out)``.
    """
    if n < 1 or out_size < 1:
        raise ValueError("window and output sizes must be positive")
    if (n + out_size - 1) // out_size + 1 > MAX_TAPS:
        raise ValueError(f"window {n} -> {out_size} needs more than {MAX_TAPS} taps per axis")
    index = np.zeros((out_size, MAX_TAPS), dtype=np.int64)
    weight = np.zeros((out_size, MAX_TAPS), dtype=np.float64)
    scale = n / out_size
    for i in range(out_size):
        lo, hi = i * scale, (i + 1) * scale
        k = 0
        for j in range(int(np.floor(lo)), min(n, int(np.ceil(hi)))):
            overlap = min(hi, j + 1) - max(lo, j)
            if overlap > 1e-12:
                index[i, k] = j
                weight[i, k] = overlap / scale
                k += 1
    return index, weight


def _weight_tables(
    sizes: Sequence[int], out_size: int
) -> tuple[np.ndarray, ...]:
    """Per scale: tap indices [S, O, T], 2-D tap weights [S, O, O, T, T] (products of the 1-D
    area weights, for the edge path), 1-D weights [S, O, T] (separable interior path), window
    starts [S], taps used [S] (1 for a plain copy, 3 for 22 -> 12) and window sizes [S]."""
    idx = np.zeros((len(sizes), out_size, MAX_TAPS), dtype=np.int64)
    w2 = np.zeros((len(sizes), out_size, out_size, MAX_TAPS, MAX_TAPS), dtype=np.float32)
    w1 = np.zeros((len(sizes), out_size, MAX_TAPS), dtype=np.float32)
    taps = np.zeros(len(sizes), dtype=np.int64)
    for s, n in enumerate(sizes):
        index, weight = area_weights(n, out_size)
        idx[s] = index
        w2[s] = (weight[:, None, :, None] * weight[None, :, None, :]).astype(np.float32)
        w1[s] = weight
        taps[s] = int((weight > 0).sum(axis=1).max())
    starts = np.array([window_start(n) for n in sizes], dtype=np.int64)
    extents = np.array(sizes, dtype=np.int64)
    return idx, w2, w1, starts, taps, extents


@numba.njit(parallel=True, cache=True, fastmath=False)
def _extract_kernel(
    stack: np.ndarray,  # float32 [C, H, W], normalised, NaN already 0
    rows: np.ndarray,  # int64 [N]
    cols: np.ndarray,  # int64 [N]
    starts: np.ndarray,  # int64 [S]
    extents: np.ndarray,  # int64 [S] window sizes
    taps: np.ndarray,  # int64 [S] taps used per axis
    idx: np.ndarray,  # int64 [S, O, T]
    w2: np.ndarray,  # float32 [S, O, O, T, T]
    w1: np.ndarray,  # float32 [S, O, T]
    scratch: np.ndarray,  # float32 [threads, O, max extent]
    out: np.ndarray,  # float32 [>=N, C, O, O, S]
) -> None:
    n_factors, height, width = stack.shape
    n_scales, out_size = idx.shape[0], idx.shape[1]
    for s in numba.prange(rows.shape[0]):
        for k in range(n_scales):
            top = rows[s] + starts[k]
            left = cols[s] + starts[k]
            t = taps[k]
            inside = top >= 0 and left >= 0 and top + extents[k] <= height and left + extents[k] <= width
            if inside and t == 1:  # n == out_size: a plain copy
                for f in range(n_factors):
                    for i in range(out_size):
                        rr = top + idx[k, i, 0]
                        for j in range(out_size):
                            out[s, f, i, j, k] = stack[f, rr, left + idx[k, j, 0]]
            elif inside:  # the common case: separable, no bounds checks
                # rows first: tmp[i, :] = sum_a w[i, a] * window row idx[i, a] (contiguous, SIMD),
                # then columns; the scratch is one per thread, allocated once per call
                tmp = scratch[numba.get_thread_id()]
                n = extents[k]
                for f in range(n_factors):
                    for i in range(out_size):
                        for c in range(n):
                            tmp[i, c] = 0.0
                        for a in range(t):
                            wa = w1[k, i, a]
                            rr = top + idx[k, i, a]
                            for c in range(n):
                                tmp[i, c] += wa * stack[f, rr, left + c]
                    for i in range(out_size):
                        for j in range(out_size):
                            acc = np.float32(0.0)
                            for b in range(t):
                                acc += w1[k, j, b] * tmp[i, idx[k, j, b]]
                            out[s, f, i, j, k] = acc
            else:  # near the edge: cells outside the stack read as 0 (nodata after normalisation)
                for f in range(n_factors):
                    for i in range(out_size):
                        for j in range(out_size):
                            acc = np.float32(0.0)
                            for a in range(t):
                                rr = top + idx[k, i, a]
                                if rr < 0 or rr >= height:
                                    continue
                                for b in range(t):
                                    cc = left + idx[k, j, b]
                                    if cc >= 0 and cc < width:
                                        acc += w2[k, i, j, a, b] * stack[f, rr, cc]
                            out[s, f, i, j, k] = acc


def extract_windows(
    stack: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    sizes: Sequence[int] = MULTISCALE_SIZES,
    out_size: int = OUT_SIZE,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Windows of ``sizes`` around each ``(rows[i], cols[i])``, resampled to ``out_size``.

    ``stack`` is the normalised float32 ``[factors, H, W]`` (NaN already 0). Returns
    ``out[:N]`` of shape ``[N, factors, out_size, out_size, len(sizes)]``; pass ``out`` (C-contiguous
    float32, at least N long) to reuse a buffer.
    """
    if stack.ndim != 3:
        raise ValueError(f"stack must be [factors, H, W], got shape {stack.shape}")
    stack = np.ascontiguousarray(stack, dtype=np.float32)
    rows = np.ascontiguousarray(rows, dtype=np.int64).ravel()
    cols = np.ascontiguousarray(cols, dtype=np.int64).ravel()
    if rows.shape != cols.shape:
        raise ValueError("rows and cols must have the same length")
    shape = (len(rows), stack.shape[0], out_size, out_size, len(sizes))
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif (
        out.dtype != np.float32
        or not out.flags.c_contiguous
        or out.shape[1:] != shape[1:]
        or out.shape[0] < len(rows)
    ):
        raise ValueError(f"out must be C-contiguous float32 [>= {shape[0]}, {shape[1:]}], got {out.shape}")
    idx, w2, w1, starts, taps, extents = _weight_tables(sizes, out_size)
    if len(rows):
        scratch = np.empty((numba.get_num_threads() + 1, out_size, max(sizes)), dtype=np.float32)
        _extract_kernel(stack, rows, cols, starts, extents, taps, idx, w2, w1, scratch, out)
    return out[: len(rows)]


def iter_windows(
    stack: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    sizes: Sequence[int] = MULTISCALE_SIZES,
    out_size: int = OUT_SIZE,
    batch_size: int = 4096,
) -> Iterator[tuple[int, np.ndarray]]:
    """Stream ``(start, windows)`` batches; ``windows`` is a view of ONE reused buffer.

    A region's windows never sit in memory at once (1 M cells x 3 x 14 x 144 x 4 B = 24 GB); the
    caller must consume each batch (e.g. run the model on it) before asking for the next.
    """
    stack = np.ascontiguousarray(stack, dtype=np.float32)
    rows = np.asarray(rows, dtype=np.int64).ravel()
    cols = np.asarray(cols, dtype=np.int64).ravel()
    buffer = np.empty(
        (min(batch_size, max(len(rows), 1)), stack.shape[0], out_size, out_size, len(sizes)),
        dtype=np.float32,
    )
    for start in range(0, len(rows), batch_size):
        stop = min(start + batch_size, len(rows))
        yield start, extract_windows(stack, rows[start:stop], cols[start:stop], sizes, out_size, buffer)


def block_centres(height: int, width: int, halo: int) -> tuple[np.ndarray, np.ndarray]:
    """Row/column indices, in a halo-padded block, of every inner cell (row-major)."""
    rr, cc = np.meshgrid(
        np.arange(halo, halo + height, dtype=np.int64),
        np.arange(halo, halo + width, dtype=np.int64),
        indexing="ij",
    )
    return rr.ravel(), cc.ravel()
