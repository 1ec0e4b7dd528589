"""Terrain factors from a DEM: altitude, slope, aspect, curvatures, roughness, TWI.

Conventions (shared by every function here):

* ``dem`` is a 2-D array, row 0 = north (a north-up GeoTIFF read as is); NaN = nodata.
* ``cellsize`` is ``(xres, yres)``, both positive, in the same unit as the elevations (metres).
  x and y may differ; every derivative uses its own cell size.
* Outputs are float32 arrays of the DEM's shape, the border included. NaN cells stay NaN and
  NaN never leaks inward: a valid cell whose 3x3 neighbour is NaN uses its own value for that
  neighbour; a neighbour outside the raster is extrapolated linearly from the two nearest
  inside cells. Both are ``gdaldem -compute_edges``'s rules (details and the one deviation, at
  the 4 corner cells, in :mod:`slidemap.compute.terrain.kernels`).

The 3x3-window factors run as numba kernels (:mod:`slidemap.compute.terrain.kernels`, each with
a NumPy twin that the tests and benchmarks hold it to). Flow routing for TWI uses pyflwdir for
depression filling and accumulation, with steepest-descent D8 directions set here.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pyflwdir
import pyflwdir.dem
from affine import Affine

from . import kernels as _k
from .factors import TERRAIN_FACTORS as _TERRAIN_FACTORS

__all__ = [
    "TERRAIN_FACTORS",
    "TAN_SLOPE_FLOOR",
    "slope_aspect",
    "curvatures",
    "roughness",
    "flow_accumulation",
    "twi",
    "terrain_factors",
]

log = logging.getLogger(__name__)

#: Keys of :func:`terrain_factors`, in the factor stack's band order (defined with the factor list).
TERRAIN_FACTORS: tuple[str, ...] = _TERRAIN_FACTORS

#: Smallest tan(slope) used in TWI = ln(a / tan b). Flat cells (lakes, filled pits, plateaus)
#: have tan b = 0 and an infinite index; 0.001 (0.057 degrees, a 1 m drop over 1 km) keeps them
#: finite and still at the wet end of the range: with a = 1e6 m it gives ln(1e9) = 20.7, in line
#: with the paper's TWI range of -1..22.8.
TAN_SLOPE_FLOOR: float = 1e-3


def _prepare(dem: np.ndarray, cellsize: tuple[float, float]) -> tuple[np.ndarray, float, float]:
    """Validate inputs; return a C-contiguous float64 DEM (one numba signature) and dx, dy."""
    dem = np.asarray(dem)
    if dem.ndim != 2:
        raise ValueError(f"dem must be a 2-D array, got shape {dem.shape}")
    if not np.issubdtype(dem.dtype, np.number):
        raise ValueError(f"dem must be numeric, got dtype {dem.dtype}")
    try:
        dx, dy = (float(v) for v in cellsize)
    except (TypeError, ValueError):
        raise ValueError(f"cellsize must be (xres, yres), got {cellsize!r}") from None
    if not (dx > 0 and dy > 0 and math.isfinite(dx) and math.isfinite(dy)):
        raise ValueError(f"cellsize must be two positive finite numbers, got {cellsize!r}")
    z = np.ascontiguousarray(dem, dtype=np.float64)
    if np.isinf(z).any():  # not an elevation: treat as nodata (copy, never touch the caller's)
        z = np.where(np.isinf(z), np.nan, z)
    return z, dx, dy


def slope_aspect(dem: np.ndarray, cellsize: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Slope and aspect by Horn's (1981) method.

    Args:
        dem: elevations, row 0 = north, NaN = nodata.
        cellsize: ``(xres, yres)`` in the elevation unit.

    Returns:
        ``(slope, aspect)`` float32. Slope in degrees (0-90). Aspect in degrees 0-360 clockwise
        from north, the azimuth of the downslope direction (gdaldem's convention: a slope
        falling to the east has aspect 90); -1 where the gradient is exactly zero (flat).
        Unlike gdaldem's aspect, which ignores the cell size, the gradient here divides by
        each axis' own cell size, so anisotropic cells give the true downslope azimuth.
    """
    z, dx, dy = _prepare(dem, cellsize)
    return _k.horn_slope_aspect(z, dx, dy)


def curvatures(dem: np.ndarray, cellsize: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Plan and profile curvature by Zevenbergen & Thorne (1987), as ArcGIS's Curvature tool.

    ArcGIS ("How Curvature works", Spatial Analyst) fits
    ``Z = Ax²y² + Bx²y + Cxy² + Dx² + Ey² + Fxy + Gx + Hy + I`` to the 3x3 window, so
    ``D = z_xx / 2``, ``E = z_yy / 2``, ``F = z_xy``, ``G = z_x``, ``H = z_y`` (x east, y north;
    here with the x cell size in D, F, G and the y cell size in E, F, H). Its sign conventions
    (tool help, Usage): *profile* negative = upwardly convex, positive = upwardly concave;
    *plan* positive = upwardly convex, negative = upwardly concave; both in 1/100 z-units; and
    Esri KB 000005001: ``curvature = plan - profile`` with ``curvature = -2(D + E) * 100``.
    The formulas satisfying all three are::

        profile =  200 (D G² + E H² + F G H) / (G² + H²)   = 100 * d²z/ds² along the gradient
        plan    = -200 (D H² + E G² - F G H) / (G² + H²)   = -100 * d²z/dt² along the contour

    So a dome (hilltop) has profile < 0 and plan > 0; a bowl the opposite. Where the gradient
    is exactly zero there is no slope direction and both are 0 (ArcGIS's flat value).
    Sources: https://pro.arcgis.com/en/pro-app/2.7/tool-reference/spatial-analyst/how-curvature-works.htm,
    https://pro.arcgis.com/en/pro-app/2.6/tool-reference/spatial-analyst/curvature.htm (Usage),
    https://support.esri.com/en-us/knowledge-base/what-is-the-difference-between-the-main-output-of-the-c-000005001.
    SAGA's ZT curvatures are the same derivatives normalised differently (see tests/test_terrain.py):
    ``cplan = (plan / 100) / |grad|``, ``cprof = -(profile / 100) / (1 + |grad|²)^1.5``.

    Args:
        dem: elevations, row 0 = north, NaN = nodata.
        cellsize: ``(xres, yres)`` in the elevation unit.

    Returns:
        ``(plan, profile)`` float32 in 1/100 (1/z-unit).
    """
    z, dx, dy = _prepare(dem, cellsize)
    return _k.zt_curvatures(z, dx, dy)


def roughness(dem: np.ndarray, cellsize: tuple[float, float]) -> np.ndarray:
    """Surface-area ratio (Jenness 2004): 3-D surface area of the cell / its planimetric area.

    The cell is split into 8 triangles, each from the cell centre to the midpoints towards two
    adjacent neighbours (Jenness' half-edge construction; the 8 triangles tile the cell exactly
    in plan). Their 3-D areas (cross products, exact for any triangle) are summed and divided by
    ``xres * yres``. A plane with slope b gives exactly ``1 / cos b``; flat ground gives 1.

    Args:
        dem: elevations, row 0 = north, NaN = nodata.
        cellsize: ``(xres, yres)`` in the elevation unit.

    Returns:
        float32 ratio, >= 1.
    """
    z, dx, dy = _prepare(dem, cellsize)
    return _k.surface_ratio(z, dx, dy)


def _d8_directions(z: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """pyflwdir D8 codes (uint8; 0 outlet, 247 nodata) of a float64 DEM with at least one value."""
    valid = np.isfinite(z)
    # Make pyflwdir's fill exact, so that a filled flat is exactly level with its pour point and
    # d8_resolve_flats reaches every flat cell without a tolerance: its priority queue keys are
    # float32 and a raised cell gets z1 + (key - z1), so we hand it float32-representable values
    # shifted into [C, 2C] (C >= their range), where that sum is exact (Sterbenz). Rounding to
    # float32 there costs at most ~1e-4 m per km of relief and keeps the values' order (ties
    # become flats, which are routed). -1 is then a safe nodata value.
    zmin = float(np.nanmin(z))
    span = max(float(np.nanmax(z)) - zmin, 1.0)
    shifted = np.where(valid, ((z - zmin) + span).astype(np.float32), -1.0).astype(np.float64)
    filled, _ = pyflwdir.dem.fill_depressions(shifted, nodata=-1.0, outlets="edge")
    filled = np.where(valid, filled, np.nan)
    d8 = _k.d8_steepest(filled, dx, dy)
    unresolved = _k.d8_resolve_flats(filled, d8)
    if unresolved:
        log.warning("flow routing: %d flat cells without an exit were made outlets", unresolved)
    return d8


def flow_accumulation(dem: np.ndarray, cellsize: tuple[float, float]) -> np.ndarray:
    """Upslope contributing area (m², the cell itself included), D8 over the filled DEM.

    1. Depressions are filled with pyflwdir (MIT, maintained, already a project dependency):
       ``pyflwdir.dem.fill_depressions`` (priority flood, Wang & Liu 2006), outlets at the edge
       of the valid data (the raster border and the rim of NaN holes), so the whole DEM drains.
    2. D8 directions by steepest descent on the filled DEM, using the true x, y and diagonal
       distances (:func:`~slidemap.compute.terrain.kernels.d8_steepest`); flats (filled pits,
       lakes) drain to their nearest exit (:func:`~slidemap.compute.terrain.kernels.d8_resolve_flats`).
       pyflwdir's own ``from_dem`` directions are not used: they point at the lowest, not the
       steepest, neighbour, break ties by scan order and run border cells along the border.
    3. The accumulation itself is pyflwdir's (``from_array(...).upstream_area``).

    Args:
        dem: elevations, row 0 = north, NaN = nodata.
        cellsize: ``(xres, yres)`` in metres.

    Returns:
        float32 contributing area in m² (at least ``xres * yres``); NaN where the DEM is NaN.
    """
    z, dx, dy = _prepare(dem, cellsize)
    out = np.full(z.shape, np.nan, dtype=np.float32)
    valid = np.isfinite(z)
    if not valid.any():
        return out
    if z.size == 1:  # pyflwdir needs at least two cells; one cell drains only itself
        out[valid] = dx * dy
        return out
    d8 = _d8_directions(z, dx, dy)
    # The transform only carries the cell size (pyflwdir takes cell areas from it).
    transform = Affine(dx, 0.0, 0.0, 0.0, -dy, 0.0)
    flw = pyflwdir.from_array(d8, ftype="d8", check_ftype=False, transform=transform, latlon=False)
    cells = flw.upstream_area(unit="cell")
    out[valid] = (cells[valid] * (dx * dy)).astype(np.float32)
    log.debug("flow accumulation: %d valid cells, max area %.3g m2", valid.sum(), np.nanmax(out))
    return out


def _twi(area: np.ndarray, slope_deg: np.ndarray, dx: float, dy: float) -> np.ndarray:
    # Specific catchment area a = A / w. For D8, the contour width w a cell drains through is one
    # cell width; with anisotropic cells we use the geometric mean sqrt(dx * dy), which is the
    # width of a square cell of the same area (exactly the cell size when dx == dy).
    a = area.astype(np.float64) / math.sqrt(dx * dy)
    tan_b = np.maximum(np.tan(np.radians(slope_deg.astype(np.float64))), TAN_SLOPE_FLOOR)
    return np.log(a / tan_b).astype(np.float32)


def twi(dem: np.ndarray, cellsize: tuple[float, float]) -> np.ndarray:
    """Topographic wetness index ``ln(a / tan b)`` (Beven & Kirkby 1979).

    ``a`` is the specific catchment area (m): :func:`flow_accumulation` divided by the contour
    width (one cell width, ``sqrt(xres * yres)``). ``b`` is the local Horn slope of the original
    (unfilled) DEM, from :func:`slope_aspect`; ``tan b`` is floored at :data:`TAN_SLOPE_FLOOR`
    so flat cells stay finite.

    Args:
        dem: elevations, row 0 = north, NaN = nodata.
        cellsize: ``(xres, yres)`` in metres.

    Returns:
        float32 TWI (dimensionless, ln of metres); NaN where the DEM is NaN.
    """
    _, dx, dy = _prepare(dem, cellsize)
    slope, _ = slope_aspect(dem, cellsize)
    return _twi(flow_accumulation(dem, cellsize), slope, dx, dy)


def terrain_factors(dem: np.ndarray, cellsize: tuple[float, float]) -> dict[str, np.ndarray]:
    """Every terrain factor of the stack, each computed once.

    Args:
        dem: elevations (m), row 0 = north, NaN = nodata.
        cellsize: ``(xres, yres)`` in metres.

    Returns:
        ``{name: float32 array}`` with keys exactly :data:`TERRAIN_FACTORS`: ``altitude`` (m),
        ``slope`` (degrees), ``aspect`` (degrees from north, -1 flat), ``plan_curvature`` and
        ``profile_curvature`` (ArcGIS, 1/100 z-units), ``roughness`` (surface-area ratio),
        ``twi``.
    """
    z, dx, dy = _prepare(dem, cellsize)
    log.info("terrain factors: %d x %d DEM, cell %.4g x %.4g", z.shape[0], z.shape[1], dx, dy)
    slope, aspect = _k.horn_slope_aspect(z, dx, dy)
    plan, profile = _k.zt_curvatures(z, dx, dy)
    rough = _k.surface_ratio(z, dx, dy)
    area = flow_accumulation(z, (dx, dy))
    return {
        "altitude": z.astype(np.float32),
        "slope": slope,
        "aspect": aspect,
        "plan_curvature": plan,
        "profile_curvature": profile,
        "roughness": rough,
        "twi": _twi(area, slope, dx, dy),
    }


def hillshade(dem: np.ndarray, cellsize: tuple[float, float], azimuth: float = 315.0, altitude: float = 45.0) -> np.ndarray:
    """Shaded relief as ``gdaldem hillshade`` computes it (Horn's gradient, light from ``azimuth``
    degrees clockwise from north at ``altitude`` degrees): uint8 1-255, 0 where the DEM (or a
    neighbour) has no data. The base map of a region without imagery."""
    slope, aspect = slope_aspect(dem, cellsize)
    zenith = np.deg2rad(90.0 - altitude)
    s = np.deg2rad(slope.astype(np.float64))
    a = np.deg2rad(np.where(aspect < 0, 0.0, aspect).astype(np.float64))
    shade = np.cos(zenith) * np.cos(s) + np.sin(zenith) * np.sin(s) * np.cos(np.deg2rad(azimuth) - a)
    out = (1.0 + 254.0 * np.clip(shade, 0.0, 1.0)).round()
    out[~np.isfinite(slope)] = 0
    return out.astype(np.uint8)
