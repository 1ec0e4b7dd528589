"""3x3-window terrain kernels: numba versions and the plain NumPy versions they must equal.

Every kernel here reads the same 3x3 window around a cell::

    z1 z2 z3        NW  N  NE        row r-1 (north: row 0 is the top of a north-up raster)
    z4 z5 z6   =     W  C  E         row r
    z7 z8 z9        SW  S  SE        row r+1

Missing neighbours follow ``gdaldem -compute_edges`` (GDAL's ``GDALGeneric3x3Processing``):

* outside the raster, a neighbour is extrapolated linearly through the nearest inside cell,
  ``2 * z(inside) - z(one further in)`` (GDAL's ``INTERPOL``), so the border of a plane is
  exact. At the four corner cells GDAL replicates along x instead; we extrapolate diagonally
  (still exact for a plane), so those 4 cells can differ from gdaldem;
* a neighbour that is NaN, or whose extrapolation needs a NaN or a cell beyond a raster only
  one cell wide, takes the centre value ``z5`` (GDAL's ``ComputeVal``). NaN never leaks into a
  valid cell; a NaN centre gives NaN.

All arithmetic is float64 (the inputs are converted once by the caller, so each kernel is
compiled for a single signature and numba's on-disk cache is hit on every later import); the
outputs are float32, the project's raster type.

The NumPy versions (``*_numpy``) are the reference the tests hold the numba kernels to and the
baseline the benchmark times them against. They use the same formulas in the same order, so the
two agree to float64 rounding before the float32 cast. (``d8_resolve_flats`` is a sequential
breadth-first search with no array form; the tests check it through its invariants.)
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

__all__ = [
    "horn_slope_aspect",
    "horn_slope_aspect_numpy",
    "zt_curvatures",
    "zt_curvatures_numpy",
    "surface_ratio",
    "surface_ratio_numpy",
    "d8_steepest",
    "d8_steepest_numpy",
    "d8_resolve_flats",
    "D8_PIT",
    "D8_NODATA",
    "D8_FLAT",
    "D8_CODES",
]

_DEG = 180.0 / math.pi


# --------------------------------------------------------------------------------------------
# numba
# --------------------------------------------------------------------------------------------


@njit(cache=True)
def _get(dem: np.ndarray, r: int, c: int, centre: float) -> float:
    """Window value at (r, c): the cell, its linear extrapolation if outside, or the centre."""
    h, w = dem.shape
    # A one-cell-wide axis has no second cell to extrapolate from: the surface is held constant
    # across it (and extrapolated along the other axis as usual), so a 1 x N strip of a plane keeps
    # the plane's slope instead of half of it (the centre value would flatten the 1-2-1 weights).
    if h == 1:
        r = 0
    if w == 1:
        c = 0
    if r >= 0 and c >= 0 and r < h and c < w:
        v = dem[r, c]
        return centre if math.isnan(v) else v
    # Outside: mirror through the nearest inside cell (r1, c1) to (r2, c2), then 2*a - b.
    r1 = min(max(r, 0), h - 1)
    c1 = min(max(c, 0), w - 1)
    r2 = 2 * r1 - r
    c2 = 2 * c1 - c
    if r2 < 0 or c2 < 0 or r2 >= h or c2 >= w:
        return centre
    a = dem[r1, c1]
    b = dem[r2, c2]
    if math.isnan(a) or math.isnan(b):
        return centre
    return 2.0 * a - b


@njit(cache=True)
def _window(dem: np.ndarray, r: int, c: int):  # noqa: ANN202 - numba tuple
    # prange indices are unsigned inside parfors; mixing them with signed ints would give
    # float64 indices, so make both signed first.
    r = np.int64(r)
    c = np.int64(c)
    z5 = dem[r, c]
    return (
        _get(dem, r - 1, c - 1, z5),
        _get(dem, r - 1, c, z5),
        _get(dem, r - 1, c + 1, z5),
        _get(dem, r, c - 1, z5),
        z5,
        _get(dem, r, c + 1, z5),
        _get(dem, r + 1, c - 1, z5),
        _get(dem, r + 1, c, z5),
        _get(dem, r + 1, c + 1, z5),
    )


@njit(cache=True)
def _azimuth(p: float, q: float) -> float:
    """Azimuth (degrees clockwise from north) of the downslope direction (-p, -q); -1 if flat."""
    if p == 0.0 and q == 0.0:
        return -1.0
    az = math.atan2(-p, -q) * _DEG
    if az < 0.0:
        az += 360.0
    return az


@njit(parallel=True, cache=True)
def horn_slope_aspect(dem: np.ndarray, dx: float, dy: float) -> tuple[np.ndarray, np.ndarray]:
    """Horn (1981) slope (degrees) and aspect (degrees from north, -1 flat) of a float64 DEM."""
    h, w = dem.shape
    slope = np.empty((h, w), np.float32)
    aspect = np.empty((h, w), np.float32)
    for r in prange(h):
        for c in range(w):
            if math.isnan(dem[r, c]):
                slope[r, c] = np.nan
                aspect[r, c] = np.nan
                continue
            z1, z2, z3, z4, z5, z6, z7, z8, z9 = _window(dem, r, c)
            # dz/dx (x east) and dz/dy (y north), Horn's 1-2-1 weights over 8 cell sizes.
            p = ((z3 + 2.0 * z6 + z9) - (z1 + 2.0 * z4 + z7)) / (8.0 * dx)
            q = ((z1 + 2.0 * z2 + z3) - (z7 + 2.0 * z8 + z9)) / (8.0 * dy)
            slope[r, c] = math.atan(math.sqrt(p * p + q * q)) * _DEG
            a = np.float32(_azimuth(p, q))
            # float32 rounding can turn 359.99999999 into 360.0; 360 is north, i.e. 0.
            aspect[r, c] = a if a < 360.0 else np.float32(0.0)
    return slope, aspect


@njit(parallel=True, cache=True)
def zt_curvatures(dem: np.ndarray, dx: float, dy: float) -> tuple[np.ndarray, np.ndarray]:
    """Zevenbergen-Thorne plan and profile curvature, ArcGIS convention (see terrain.curvatures)."""
    h, w = dem.shape
    plan = np.empty((h, w), np.float32)
    prof = np.empty((h, w), np.float32)
    for r in prange(h):
        for c in range(w):
            if math.isnan(dem[r, c]):
                plan[r, c] = np.nan
                prof[r, c] = np.nan
                continue
            z1, z2, z3, z4, z5, z6, z7, z8, z9 = _window(dem, r, c)
            d = ((z4 + z6) / 2.0 - z5) / (dx * dx)
            e = ((z2 + z8) / 2.0 - z5) / (dy * dy)
            f = (-z1 + z3 + z7 - z9) / (4.0 * dx * dy)
            g = (-z4 + z6) / (2.0 * dx)
            hh = (z2 - z8) / (2.0 * dy)
            g2h2 = g * g + hh * hh
            if g2h2 == 0.0:
                # No gradient: no slope direction, ArcGIS reports 0.
                plan[r, c] = 0.0
                prof[r, c] = 0.0
                continue
            prof[r, c] = 200.0 * (d * g * g + e * hh * hh + f * g * hh) / g2h2
            plan[r, c] = -200.0 * (d * hh * hh + e * g * g - f * g * hh) / g2h2
    return plan, prof


@njit(parallel=True, cache=True)
def surface_ratio(dem: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Jenness (2004) surface-area ratio: 3D area of the 8 half-triangles / planimetric area."""
    h, w = dem.shape
    out = np.empty((h, w), np.float32)
    # Neighbours in ring order N, NE, E, SE, S, SW, W, NW as (x east, y north) half-offsets.
    ox = np.array([0.0, 1.0, 1.0, 1.0, 0.0, -1.0, -1.0, -1.0]) * (dx / 2.0)
    oy = np.array([1.0, 1.0, 0.0, -1.0, -1.0, -1.0, 0.0, 1.0]) * (dy / 2.0)
    for r in prange(h):
        oz = np.empty(8)
        for c in range(w):
            if math.isnan(dem[r, c]):
                out[r, c] = np.nan
                continue
            z1, z2, z3, z4, z5, z6, z7, z8, z9 = _window(dem, r, c)
            oz[0] = (z2 - z5) / 2.0
            oz[1] = (z3 - z5) / 2.0
            oz[2] = (z6 - z5) / 2.0
            oz[3] = (z9 - z5) / 2.0
            oz[4] = (z8 - z5) / 2.0
            oz[5] = (z7 - z5) / 2.0
            oz[6] = (z4 - z5) / 2.0
            oz[7] = (z1 - z5) / 2.0
            area = 0.0
            for k in range(8):
                k2 = (k + 1) % 8
                cx = oy[k] * oz[k2] - oz[k] * oy[k2]
                cy = oz[k] * ox[k2] - ox[k] * oz[k2]
                cz = ox[k] * oy[k2] - oy[k] * ox[k2]
                area += 0.5 * math.sqrt(cx * cx + cy * cy + cz * cz)
            out[r, c] = area / (dx * dy)
    return out


# --------------------------------------------------------------------------------------------
# plain NumPy references (same formulas, whole-array temporaries)
# --------------------------------------------------------------------------------------------


def _window_numpy(dem: np.ndarray) -> tuple[np.ndarray, ...]:
    """The nine window arrays z1..z9 with the module's edge and NaN rule."""
    z5 = dem
    h, w = dem.shape
    padded = np.full((h + 2, w + 2), np.nan)
    padded[1:-1, 1:-1] = dem
    # Border: linear extrapolation (NaN where impossible or where a NaN is involved).
    if h >= 2:
        padded[0, 1:-1] = 2.0 * dem[0] - dem[1]
        padded[-1, 1:-1] = 2.0 * dem[-1] - dem[-2]
    if w >= 2:
        padded[1:-1, 0] = 2.0 * dem[:, 0] - dem[:, 1]
        padded[1:-1, -1] = 2.0 * dem[:, -1] - dem[:, -2]
    if h >= 2 and w >= 2:
        padded[0, 0] = 2.0 * dem[0, 0] - dem[1, 1]
        padded[0, -1] = 2.0 * dem[0, -1] - dem[1, -2]
        padded[-1, 0] = 2.0 * dem[-1, 0] - dem[-2, 1]
        padded[-1, -1] = 2.0 * dem[-1, -1] - dem[-2, -2]
    if h == 1:  # held constant across a one-cell-wide axis (see _get)
        padded[0] = padded[-1] = padded[1]
    if w == 1:
        padded[:, 0] = padded[:, -1] = padded[:, 1]
    out = []
    for dr in (0, 1, 2):
        for dc in (0, 1, 2):
            z = padded[dr : dr + h, dc : dc + w]
            out.append(z5 if (dr, dc) == (1, 1) else np.where(np.isnan(z), z5, z))
    return tuple(out)


def horn_slope_aspect_numpy(dem: np.ndarray, dx: float, dy: float) -> tuple[np.ndarray, np.ndarray]:
    """NumPy version of :func:`horn_slope_aspect`."""
    z1, z2, z3, z4, z5, z6, z7, z8, z9 = _window_numpy(dem)
    p = ((z3 + 2.0 * z6 + z9) - (z1 + 2.0 * z4 + z7)) / (8.0 * dx)
    q = ((z1 + 2.0 * z2 + z3) - (z7 + 2.0 * z8 + z9)) / (8.0 * dy)
    slope = (np.arctan(np.sqrt(p * p + q * q)) * _DEG).astype(np.float32)
    az = np.arctan2(-p, -q) * _DEG
    az = np.where(az < 0.0, az + 360.0, az)
    az = np.where((p == 0.0) & (q == 0.0), -1.0, az).astype(np.float32)
    az[az >= 360.0] = 0.0
    nan = np.isnan(dem)
    slope[nan] = np.nan  # Horn's gradient does not use the centre value itself
    az[nan] = np.nan
    return slope, az


def zt_curvatures_numpy(dem: np.ndarray, dx: float, dy: float) -> tuple[np.ndarray, np.ndarray]:
    """NumPy version of :func:`zt_curvatures`."""
    z1, z2, z3, z4, z5, z6, z7, z8, z9 = _window_numpy(dem)
    d = ((z4 + z6) / 2.0 - z5) / (dx * dx)
    e = ((z2 + z8) / 2.0 - z5) / (dy * dy)
    f = (-z1 + z3 + z7 - z9) / (4.0 * dx * dy)
    g = (-z4 + z6) / (2.0 * dx)
    h = (z2 - z8) / (2.0 * dy)
    g2h2 = g * g + h * h
    flat = g2h2 == 0.0
    den = np.where(flat, 1.0, g2h2)
    prof = np.where(flat, 0.0, 200.0 * (d * g * g + e * h * h + f * g * h) / den)
    plan = np.where(flat, 0.0, -200.0 * (d * h * h + e * g * g - f * g * h) / den)
    nan = np.isnan(dem)
    prof[nan] = np.nan
    plan[nan] = np.nan
    return plan.astype(np.float32), prof.astype(np.float32)


def surface_ratio_numpy(dem: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """NumPy version of :func:`surface_ratio`."""
    z1, z2, z3, z4, z5, z6, z7, z8, z9 = _window_numpy(dem)
    ring = (z2, z3, z6, z9, z8, z7, z4, z1)  # N, NE, E, SE, S, SW, W, NW
    ox = np.array([0.0, 1.0, 1.0, 1.0, 0.0, -1.0, -1.0, -1.0]) * (dx / 2.0)
    oy = np.array([1.0, 1.0, 0.0, -1.0, -1.0, -1.0, 0.0, 1.0]) * (dy / 2.0)
    oz = [(z - z5) / 2.0 for z in ring]
    area = np.zeros(dem.shape)
    for k in range(8):
        k2 = (k + 1) % 8
        cx = oy[k] * oz[k2] - oz[k] * oy[k2]
        cy = oz[k] * ox[k2] - ox[k] * oz[k2]
        cz = ox[k] * oy[k2] - oy[k] * ox[k2]
        area += 0.5 * np.sqrt(cx * cx + cy * cy + cz * cz)
    return (area / (dx * dy)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# D8 flow directions on a depression-filled DEM (pyflwdir's D8 codes)
# --------------------------------------------------------------------------------------------
#
# pyflwdir.from_dem derives D8 from its priority-flood queue: each cell drains to the neighbour
# that reached it first, i.e. the *lowest* neighbour (not the steepest: no sqrt(2) for
# diagonals), ties broken by scan order, and border cells drain along the border into the
# corner. Those are visible artefacts in TWI (a tilted plane drains diagonally; the border
# collects whole hillsides). So we keep pyflwdir for what it does well (the depression filling
# and the accumulation) and set the directions here: steepest descent (drop / distance, with the
# true x, y and diagonal distances), then flats routed to their exits.
#
# Codes (pyflwdir.core_d8._ds): the downstream neighbour at (dr, dc) has code D8_CODES[dr+1, dc+1]
# (E=1, SE=2, S=4, SW=8, W=16, NW=32, N=64, NE=128); 0 = pit / outlet; 247 = nodata.

D8_PIT = np.uint8(0)
D8_NODATA = np.uint8(247)
D8_FLAT = np.uint8(254)  # internal marker: no lower neighbour, not an outlet; resolved later
D8_CODES = np.array([[32, 64, 128], [16, 0, 1], [8, 4, 2]], dtype=np.uint8)


@njit(parallel=True, cache=True)
def d8_steepest(filled: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Steepest-descent D8 codes of a filled float64 DEM (NaN = nodata).

    A cell drains to the neighbour with the largest ``(z - z_n) / distance`` among the strictly
    lower ones (ties: the first in N, NE, E, SE, S, SW, W, NW order). Without a lower neighbour,
    a cell on the edge of the data (raster border or next to NaN) is an outlet (``D8_PIT``)
    and any other cell is on a flat (``D8_FLAT``), left to :func:`d8_resolve_flats`.
    """
    h, w = filled.shape
    out = np.empty((h, w), np.uint8)
    diag = math.sqrt(dx * dx + dy * dy)
    # ring order N, NE, E, SE, S, SW, W, NW
    drs = np.array([-1, -1, 0, 1, 1, 1, 0, -1])
    dcs = np.array([0, 1, 1, 1, 0, -1, -1, -1])
    dist = np.array([dy, diag, dx, diag, dy, diag, dx, diag])
    for r in prange(h):
        ri = np.int64(r)
        for c in range(w):
            z0 = filled[ri, c]
            if math.isnan(z0):
                out[ri, c] = D8_NODATA
                continue
            best = 0.0
            kbest = -1
            edge = False
            for k in range(8):
                rr = ri + drs[k]
                cc = c + dcs[k]
                if rr < 0 or cc < 0 or rr >= h or cc >= w:
                    edge = True
                    continue
                zn = filled[rr, cc]
                if math.isnan(zn):
                    edge = True
                    continue
                g = (z0 - zn) / dist[k]
                if g > best:
                    best = g
                    kbest = k
            if kbest >= 0:
                out[ri, c] = D8_CODES[drs[kbest] + 1, dcs[kbest] + 1]
            elif edge:
                out[ri, c] = D8_PIT
            else:
                out[ri, c] = D8_FLAT
    return out


@njit(cache=True)
def d8_resolve_flats(filled: np.ndarray, d8: np.ndarray) -> int:
    """Route every ``D8_FLAT`` cell, in place, to the nearest (in steps) exit of its flat.

    A breadth-first search grows from the cells that already drain (steepest or outlet) into
    the flat, each flat cell pointing at the neighbour it was reached from, and only across
    neighbours no higher than itself. Every such pointer goes to an earlier-labelled cell that is
    not higher, and every steepest pointer goes strictly down, so the directions cannot form a
    loop. On an exactly filled DEM every flat is reached; any cell that is not (possible only
    through rounding in the fill) is made an outlet, and the count of those is returned.
    """
    h, w = filled.shape
    n = h * w
    queue = np.empty(n, np.int64)
    head = 0
    tail = 0
    # Seeds: draining cells next to a flat cell.
    for r in range(h):
        for c in range(w):
            code = d8[r, c]
            if code == D8_FLAT or code == D8_NODATA:
                continue
            seed = False
            for dr in range(-1, 2):
                for dc in range(-1, 2):
                    rr = r + dr
                    cc = c + dc
                    if 0 <= rr < h and 0 <= cc < w and d8[rr, cc] == D8_FLAT:
                        seed = True
            if seed:
                queue[tail] = r * w + c
                tail += 1
    while head < tail:
        idx = queue[head]
        head += 1
        r = idx // w
        c = idx % w
        zu = filled[r, c]
        for dr in range(-1, 2):
            for dc in range(-1, 2):
                rr = r + dr
                cc = c + dc
                if rr < 0 or cc < 0 or rr >= h or cc >= w or d8[rr, cc] != D8_FLAT:
                    continue
                if zu > filled[rr, cc]:
                    continue  # never point a flat cell uphill
                # (rr, cc) drains to (r, c): the code of the step (-dr, -dc) seen from (rr, cc).
                d8[rr, cc] = D8_CODES[1 - dr, 1 - dc]
                queue[tail] = rr * w + cc
                tail += 1
    unresolved = 0
    for r in range(h):
        for c in range(w):
            if d8[r, c] == D8_FLAT:
                d8[r, c] = D8_PIT
                unresolved += 1
    return unresolved


def d8_steepest_numpy(filled: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """NumPy version of :func:`d8_steepest`."""
    h, w = filled.shape
    diag = math.sqrt(dx * dx + dy * dy)
    drs = (-1, -1, 0, 1, 1, 1, 0, -1)
    dcs = (0, 1, 1, 1, 0, -1, -1, -1)
    dist = (dy, diag, dx, diag, dy, diag, dx, diag)
    padded = np.full((h + 2, w + 2), np.nan)
    padded[1:-1, 1:-1] = filled
    best = np.zeros((h, w))
    kbest = np.full((h, w), -1)
    edge = np.zeros((h, w), bool)
    for k in range(8):
        zn = padded[1 + drs[k] : 1 + drs[k] + h, 1 + dcs[k] : 1 + dcs[k] + w]
        edge |= np.isnan(zn)
        g = (filled - zn) / dist[k]
        better = g > best  # False where either is NaN
        best = np.where(better, g, best)
        kbest = np.where(better, k, kbest)
    codes = np.array([D8_CODES[dr + 1, dc + 1] for dr, dc in zip(drs, dcs)], dtype=np.uint8)
    out = np.where(kbest >= 0, codes[np.maximum(kbest, 0)], np.where(edge, D8_PIT, D8_FLAT))
    out = out.astype(np.uint8)
    out[np.isnan(filled)] = D8_NODATA
    return out
