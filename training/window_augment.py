"""Window augmentation for the susceptibility networks: the 8 symmetries of the square, aspect-aware.

Rotating or mirroring a window of factors is a rotated or mirrored landscape, which is as likely to
slide -- as long as every *direction* in it turns with it. Of the factors only the aspect carries a
direction: its sine (east component) and cosine (north component) are transformed like a vector.
Slope, curvatures, distances and classes are invariant scalars.

Element ``k`` of the group (0..7): mirror east-west first when ``k >= 4``, then rotate ``k % 4``
quarter turns counter-clockwise (``numpy.rot90`` on the row and column axes). Arrays are
``[N, channels, rows, cols, scales]`` windows and ``[N, channels]`` centre values.
"""

from __future__ import annotations

import numpy as np

N_SYMMETRIES = 8


def transform_direction(east: np.ndarray, north: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A direction vector under symmetry ``k`` (see the module docstring); new arrays, so the
    results can be assigned back into the arrays the components were views of."""
    east, north = np.array(east, copy=True), np.array(north, copy=True)
    if k >= 4:
        east = -east
    for _ in range(k % 4):  # a quarter turn counter-clockwise: (e, n) -> (-n, e)
        east, north = -north, east
    return east, north


def transform_windows(x: np.ndarray, k: int, sin_idx: int | None, cos_idx: int | None) -> np.ndarray:
    """Windows ``[N, C, rows, cols, S]`` under symmetry ``k``; a new array."""
    out = x[:, :, :, ::-1, :] if k >= 4 else x
    out = np.rot90(out, k % 4, axes=(2, 3)).copy()
    if sin_idx is not None and cos_idx is not None:
        out[:, sin_idx], out[:, cos_idx] = transform_direction(out[:, sin_idx], out[:, cos_idx], k)
    return out


def transform_centre(c: np.ndarray, k: int, sin_idx: int | None, cos_idx: int | None) -> np.ndarray:
    """Centre values ``[N, C]`` under symmetry ``k``: only the aspect vector changes."""
    out = c.copy()
    if sin_idx is not None and cos_idx is not None:
        out[:, sin_idx], out[:, cos_idx] = transform_direction(c[:, sin_idx], c[:, cos_idx], k)
    return out


def augment_batch(
    windows: np.ndarray,
    centre: np.ndarray,
    rng: np.random.Generator,
    window_aspect: tuple[int | None, int | None],
    centre_aspect: tuple[int | None, int | None],
) -> tuple[np.ndarray, np.ndarray]:
    """A random symmetry per sample (windows and centre values together)."""
    ks = rng.integers(0, N_SYMMETRIES, len(windows))
    out_w = np.empty_like(windows)
    out_c = np.empty_like(centre)
    for k in range(N_SYMMETRIES):
        sel = np.flatnonzero(ks == k)
        if len(sel):
            out_w[sel] = transform_windows(windows[sel], k, *window_aspect)
            out_c[sel] = transform_centre(centre[sel], k, *centre_aspect)
    return out_w, out_c
