"""World building for the SYNTHETIC demo region: terrain, hydrography, settlements,
roads, geology, land cover, planted landslides and Sentinel-2-like imagery.

Used only by :mod:`slidemap.compute.demo.region` (see its docstring); every function takes
its own ``numpy.random.Generator`` so the output is a pure function of the seed.
"""

from __future__ import annotations

import math

import numpy as np

EPSG = 32649
CRS_STR = f"EPSG:{EPSG}"
ORIGIN_X = 430_000.0  # west edge (m, UTM 49N)
ORIGIN_Y = 3_245_000.0  # north edge
DEM_RES = 30.0
IMG_RES = 10.0
RAIN_RES = 1000.0
DEM_NODATA = -9999.0

LANDCOVER = [
    (1, "cropland"),
    (2, "forest"),
    (3, "grassland"),
    (4, "wetland"),
    (5, "water"),
    (6, "artificial"),
]
SOIL = [
    (1, "clay"),
    (2, "silty clay"),
    (3, "sandy clay"),
    (4, "clay loam"),
    (5, "silty clay loam"),
    (6, "sandy clay loam"),
    (7, "loam"),
    (8, "silt loam"),
    (9, "sandy loam"),
    (10, "silt"),
    (11, "loamy sand"),
    (12, "sand"),
]
# code, name, regolith effective cohesion (kPa), friction angle (deg), share of bands
LITHOLOGY = [
    (1, "limestone", 9.0, 36.0),
    (2, "dolomite", 8.0, 35.0),
    (3, "quartz sandstone", 7.0, 34.0),
    (4, "sandstone", 5.5, 32.0),
    (5, "siltstone", 4.0, 30.0),
    (6, "shale", 2.5, 26.0),
    (7, "mudstone", 2.0, 25.0),
    (8, "slate", 3.5, 28.0),
    (9, "quaternary alluvium", 1.0, 28.0),
]
# root cohesion by land cover (kPa)
ROOT_COHESION = {1: 1.0, 2: 4.0, 3: 1.5, 4: 0.5, 5: 0.0, 6: 0.0}
# soil texture affinity per lithology (soil codes favoured)
SOIL_AFFINITY = {
    1: (1, 4, 7),
    2: (4, 7, 2),
    3: (9, 11, 12),
    4: (9, 6, 7),
    5: (8, 10, 5),
    6: (2, 5, 1),
    7: (1, 2, 4),
    8: (4, 5, 8),
    9: (8, 10, 7),
}

GAMMA_SOIL = 19.0  # kN/m3
GAMMA_WATER = 9.81  # kN/m3
R_OVER_T_PER_1000MM = 1.0 / 6000.0  # SINMAP recharge / transmissivity (1/m) per 1000 mm/yr
BASE_MEAN_GRADIENT = 0.24  # mean |grad| of the fBm component (sets the slope distribution)
RIDGE_HEIGHT_M = 250.0
MASSIF_SCALE = 9.0e-5  # ~1400 m of massif relief over 20 km
TARGET_MEAN_SLOPE_DEG = 22.0  # the composed terrain is scaled vertically to this mean slope
TARGET_UNSTABLE = 0.07  # soil depth is calibrated so ~7 % of hillslope cells have FS < 1
TRIGGER_FS = 1.0
TRIGGER_WIDTH = 0.05  # p(trigger) = 1 / (1 + exp((FS - 1.0) / 0.05))
# Hillslope-scale colluvium: soil is deeper in hollows (cells below the mean of their 300 m
# neighbourhood) and thinner on noses and ridges. Only the neighbourhood shows it: no single-cell
# factor (slope, curvature from 3x3 cells, TWI) measures a cell's depth below its surroundings.
HOLLOW_RADIUS_M = 300.0
HOLLOW_GAIN = 0.6  # z = z0 * exp(HOLLOW_GAIN * clip(D / sd(D), -2, 2))
HOLLOW_CLIP = 2.0

# --------------------------------------------------------------------------- helpers


def _rngs(seed: int, names: list[str]) -> dict[str, np.random.Generator]:
    children = np.random.SeedSequence([int(seed), 0x5EED]).spawn(len(names))
    return {n: np.random.default_rng(c) for n, c in zip(names, children)}


def _spectral(
    rng: np.random.Generator, shape: tuple[int, int], res: float, beta: float, corner_wl: float
) -> np.ndarray:
    """Gaussian random field with power spectrum (k^2 + k0^2)^(-beta/2).

    Not normalised by its sample std: the variance is a property of the
    spectrum (~ res^2 * integral), so statistics are the same for every region
    size. Generated on a padded grid and cropped, so it does not wrap around.
    """
    ny, nx = shape
    py = int(ny + max(16, ny // 4))
    px = int(nx + max(16, nx // 4))
    noise = rng.standard_normal((py, px))
    spec = np.fft.rfft2(noise)
    ky = np.fft.fftfreq(py, d=res)[:, None]
    kx = np.fft.rfftfreq(px, d=res)[None, :]
    k0 = 1.0 / corner_wl
    amp = (kx * kx + ky * ky + k0 * k0) ** (-beta / 4.0)
    amp[0, 0] = 0.0
    field = np.fft.irfft2(spec * amp, s=(py, px))
    # scale so the field is roughly unit-variance per unit amp at this res
    field *= 1.0 / res
    return np.ascontiguousarray(field[:ny, :nx])


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], res: float, wl: float) -> np.ndarray:
    """Smooth noise with features ~wl metres, normalised to zero mean, unit std."""
    f = _spectral(rng, shape, res, 6.0, wl)
    s = f.std()
    return (f - f.mean()) / (s if s > 0 else 1.0)


def _slope_aspect(dem: np.ndarray, res: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """tan(slope), and the downslope unit vector (east, north) components."""
    gy, gx = np.gradient(dem.astype(np.float64), res)
    dzdx = gx
    dzdy = -gy  # rows run southwards
    tanb = np.hypot(dzdx, dzdy)
    with np.errstate(invalid="ignore", divide="ignore"):
        de = np.where(tanb > 0, -dzdx / tanb, 0.0)
        dn = np.where(tanb > 0, -dzdy / tanb, 0.0)
    return tanb, de, dn


def _flow(dem: np.ndarray, transform):
    import pyflwdir

    flw = pyflwdir.from_dem(dem.astype(np.float32), nodata=DEM_NODATA, transform=transform, latlon=False)
    acc = flw.accuflux(np.ones(dem.shape, dtype=np.float32))
    return flw, acc.astype(np.float64)


def _geo_transform(x0: float, y0: float, res: float):
    from affine import Affine

    return Affine(res, 0.0, x0, 0.0, -res, y0)


def _cell_xy(transform, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = transform.c + (cols + 0.5) * transform.a
    y = transform.f + (rows + 0.5) * transform.e
    return x, y


def _upsample(a: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(a, factor, axis=0), factor, axis=1)


def _zoom_linear(a: np.ndarray, factor: int) -> np.ndarray:
    from scipy.ndimage import zoom

    out = zoom(a.astype(np.float32), factor, order=1, mode="nearest", grid_mode=True)
    return out[: a.shape[0] * factor, : a.shape[1] * factor]


# --------------------------------------------------------------------------- terrain


def _terrain(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict]:
    shape = (n, n)
    base = _spectral(rng, shape, DEM_RES, 4.0, 15_000.0)
    gy, gx = np.gradient(base, DEM_RES)
    base *= BASE_MEAN_GRADIENT / max(float(np.hypot(gx, gy).mean()), 1e-9)
    ridge_src = _spectral(rng, shape, DEM_RES, 4.0, 5_000.0)
    ridge_src = ridge_src / (ridge_src.std() + 1e-12)
    ridged = (1.0 - np.abs(ridge_src)) ** 2
    # large-scale massif with a fixed (size-independent) amplitude: relief grows
    # with the region size as it does in real mountains (~1000 m over 20 km)
    massif = _spectral(rng, shape, DEM_RES, 5.0, 25_000.0) * MASSIF_SCALE
    h = base + RIDGE_HEIGHT_M * ridged + massif
    # regional tilt towards a random direction: drainage leaves one side
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64) * DEM_RES
    tilt = 0.01 * (np.cos(theta) * xx + np.sin(theta) * yy)
    h = h + tilt
    # flatten lowlands a little (valley floors / basins), steepen highlands
    lo, hi = np.percentile(h, [1, 99.5])
    u = np.clip((h - lo) / max(hi - lo, 1.0), 0.0, 1.0)
    h = lo + (hi - lo) * u**1.25
    return h, {"tilt_direction_rad": float(theta)}


def _carve_valleys(h: np.ndarray, transform) -> np.ndarray:
    """Cut valleys along a first flow network; bigger rivers: deeper, wider, flat floors."""
    from scipy.ndimage import distance_transform_edt, gaussian_filter

    _, acc = _flow(h, transform)
    thr = 150.0
    chan = acc >= thr
    if not chan.any():
        return h
    dist, (ir, ic) = distance_transform_edt(~chan, return_indices=True)
    dist = dist * DEM_RES
    a_near = acc[ir, ic]
    area_km2 = a_near * DEM_RES * DEM_RES / 1e6
    depth = 14.0 * np.log1p(area_km2 / 0.15)
    half_width = 150.0 + 180.0 * np.sqrt(area_km2)
    floor = 15.0 * np.sqrt(area_km2)
    t = np.clip((dist - floor) / half_width, 0.0, 1.0)
    carve = depth * (1.0 - t) ** 1.6
    carve = gaussian_filter(carve, 1.0)
    return h - carve


def _reservoirs(rng, dem, acc, n_lakes):
    """Flatten a few reservoirs behind imagined dams on large streams."""
    from scipy.ndimage import label

    n = dem.shape[0]
    lake_mask = np.zeros(dem.shape, dtype=bool)
    lakes = []
    big = np.flatnonzero((acc >= np.percentile(acc, 99.7)).ravel())
    if big.size == 0:
        return dem, lake_mask, lakes
    yy, xx = np.mgrid[0:n, 0:n]
    for _ in range(n_lakes * 4):
        if len(lakes) >= n_lakes:
            break
        idx = int(big[rng.integers(big.size)])
        r, c = divmod(idx, n)
        if r < 8 or c < 8 or r > n - 9 or c > n - 9:
            continue
        if lake_mask[max(0, r - 20) : r + 21, max(0, c - 20) : c + 21].any():
            continue
        radius = rng.uniform(8, 25)
        disk = (yy - r) ** 2 + (xx - c) ** 2 <= radius**2
        for rise in (18.0, 12.0, 8.0, 5.0):
            level = dem[r, c] + rise * rng.uniform(0.7, 1.0)
            lab, _ = label((dem < level) & disk)
            comp = lab == lab[r, c]
            if 6 <= comp.sum() <= 0.02 * dem.size + 6:
                break
        else:
            continue
        if comp.sum() < 6:
            continue
        dem = np.where(comp, level, dem)
        lake_mask |= comp
        lakes.append({"row": r, "col": c, "level_m": float(level), "cells": int(comp.sum())})
    return dem, lake_mask, lakes


# --------------------------------------------------------------------------- vectors


def _rasterize(geoms, shape, transform, all_touched=False, values=None, dtype="uint8"):
    from rasterio.features import rasterize

    geoms = list(geoms)
    if not geoms:
        return np.zeros(shape, dtype=dtype)
    if values is None:
        shapes = ((g, 1) for g in geoms)
    else:
        shapes = zip(geoms, values)
    return rasterize(shapes, out_shape=shape, transform=transform, all_touched=all_touched, fill=0, dtype=dtype)


def _rivers(flw, acc, transform):
    import geopandas as gpd
    from shapely.geometry import LineString

    cell_km2 = DEM_RES * DEM_RES / 1e6
    thr_cells = max(60.0, 0.4 / cell_km2)
    if acc.max() < thr_cells:
        thr_cells = max(30.0, float(np.percentile(acc, 99.0)))
    mask = acc >= thr_cells
    strord = flw.stream_order(mask=mask)
    upa = (acc * cell_km2).astype(np.float32)
    feats = flw.streams(mask=mask, strord=strord, upa=upa)
    geoms, orders, upas = [], [], []
    for f in feats:
        coords = [(float(x), float(y)) for x, y in f["geometry"]["coordinates"]]
        if len(coords) < 2 or len(set(coords)) < 2:
            continue  # single-cell segments (outlets) carry no line
        geoms.append(LineString(coords))
        orders.append(int(f["properties"]["strord"]))
        upas.append(round(float(f["properties"]["upa"]), 4))
    gdf = gpd.GeoDataFrame(
        {"strahler": np.array(orders, dtype=np.int32), "upa_km2": np.array(upas, dtype=np.float64)},
        geometry=geoms,
        crs=CRS_STR,
    )
    return gdf, float(thr_cells * cell_km2)


def _water(lake_mask, rivers_gdf, transform):
    import geopandas as gpd
    from rasterio.features import shapes
    from shapely.geometry import shape as shp

    geoms, kinds = [], []
    if lake_mask.any():
        for g, v in shapes(lake_mask.astype(np.uint8), mask=lake_mask, transform=transform):
            if v == 1:
                geoms.append(shp(g).simplify(DEM_RES * 0.5).buffer(0))
                kinds.append("reservoir")
    if len(rivers_gdf):
        big_thr = max(30.0, float(rivers_gdf["upa_km2"].max()) * 0.35)
        big = rivers_gdf[rivers_gdf["upa_km2"] >= big_thr]
        for g, a in zip(big.geometry, big["upa_km2"]):
            w = min(80.0, 10.0 + 4.0 * math.sqrt(a))
            geoms.append(g.simplify(DEM_RES).buffer(w / 2.0, cap_style="flat"))
            kinds.append("river")
    geoms = [g for g in geoms if not g.is_empty]
    kinds = kinds[: len(geoms)]
    return gpd.GeoDataFrame({"kind": kinds}, geometry=geoms, crs=CRS_STR)


def _settlements(rng, dem, tanb, water30, transform, area_km2):
    import geopandas as gpd
    from rasterio.features import shapes
    from scipy.ndimage import binary_opening, gaussian_filter, label
    from shapely.geometry import shape as shp

    n = dem.shape[0]
    slope_deg = np.degrees(np.arctan(tanb))
    lo, hi = np.percentile(dem, [0, 100])
    rel = (dem - lo) / max(hi - lo, 1.0)
    suit = gaussian_filter(((slope_deg < 7.0) & (rel < 0.45) & ~water30).astype(np.float32), 3.0)
    suit[water30] = 0
    n_target = max(2, int(round(area_km2 / 12.0)))
    spacing = max(25, int(1500 / DEM_RES)) if area_km2 > 30 else max(12, n // 4)
    order = np.argsort(-(suit + 1e-3 * rng.random(suit.shape)).ravel(), kind="stable")
    seeds: list[tuple[int, int]] = []
    for idx in order[: max(5000, n_target * 200)]:
        r, c = divmod(int(idx), n)
        if suit[r, c] <= 0.05 and len(seeds) >= 2:
            break
        if r < 3 or c < 3 or r >= n - 3 or c >= n - 3:
            continue
        if any((r - a) ** 2 + (c - b) ** 2 < spacing**2 for a, b in seeds):
            continue
        seeds.append((r, c))
        if len(seeds) >= n_target:
            break
    mask = np.zeros(dem.shape, dtype=bool)
    geoms, names, pops = [], [], []
    kept: list[tuple[int, int]] = []
    for i, (r, c) in enumerate(seeds):
        radius = rng.uniform(120.0, 420.0 if i < 3 else 260.0) / DEM_RES
        k = rng.normal(0.0, 0.12, 3)
        ph = rng.uniform(0.0, 2.0 * np.pi, 3)
        half = int(radius * 1.5) + 3
        r0, r1 = max(0, r - half), min(n, r + half + 1)
        c0, c1 = max(0, c - half), min(n, c + half + 1)
        yy, xx = np.mgrid[r0:r1, c0:c1]
        d2 = (yy - r) ** 2 + (xx - c) ** 2
        ang = np.arctan2(yy - r, xx - c)
        wobble = 1.0 + k[0] * np.cos(2 * ang + ph[0]) + k[1] * np.cos(3 * ang + ph[1]) + k[2] * np.cos(5 * ang + ph[2])
        wat = water30[r0:r1, c0:c1]
        disk = (d2 <= (radius * wobble) ** 2) & (slope_deg[r0:r1, c0:c1] < 14.0) & ~wat
        disk = (binary_opening(disk, iterations=1) | (d2 <= 4)) & ~wat
        lab, _ = label(disk)
        if lab[r - r0, c - c0] == 0:
            continue
        comp = lab == lab[r - r0, c - c0]
        wtr = transform * transform.translation(c0, r0)
        polys = [shp(g) for g, v in shapes(comp.astype(np.uint8), mask=comp, transform=wtr) if v == 1]
        if not polys:
            continue
        poly = max(polys, key=lambda p: p.area).simplify(DEM_RES * 0.6).buffer(0)
        if poly.is_empty or poly.area < 2 * DEM_RES * DEM_RES:
            continue
        mask[r0:r1, c0:c1] |= comp
        kept.append((r, c))
        geoms.append(poly)
        names.append(f"Synthetic village {i + 1}")
        pops.append(int(poly.area / 100.0 * rng.uniform(0.5, 1.5)))
    gdf = gpd.GeoDataFrame({"name": names, "population": pops}, geometry=geoms, crs=CRS_STR)
    return gdf, mask, kept


def _roads(dem, tanb, water30, seeds, transform, rng):
    """Least-cost roads: multi-source Dijkstra, minimum spanning tree over the cost-Voronoi adjacency."""
    import geopandas as gpd
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra, minimum_spanning_tree
    from shapely.geometry import LineString

    f = 2  # route on a 60 m grid
    n = dem.shape[0]
    m = n // f
    if m < 4 or not seeds:
        return gpd.GeoDataFrame({"kind": []}, geometry=[], crs=CRS_STR), np.zeros(dem.shape, bool)
    tb = tanb[: m * f, : m * f].reshape(m, f, m, f).mean(axis=(1, 3))
    wt = water30[: m * f, : m * f].reshape(m, f, m, f).mean(axis=(1, 3)) > 0.5
    sdeg = np.degrees(np.arctan(tb))
    cost = 1.0 + (sdeg / 6.0) ** 2 + 40.0 * wt
    ids = np.arange(m * m).reshape(m, m)
    rows, cols, ws = [], [], []
    for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = ids[max(0, -dr) : m - max(0, dr), max(0, -dc) : m - max(0, dc)]
        b = ids[max(0, dr) : max(0, dr) + a.shape[0], max(0, dc) : max(0, dc) + a.shape[1]]
        ca = cost.ravel()[a.ravel()]
        cb = cost.ravel()[b.ravel()]
        step = math.hypot(dr, dc) * f * DEM_RES
        rows.append(a.ravel())
        cols.append(b.ravel())
        ws.append(step * 0.5 * (ca + cb))
    r_ = np.concatenate(rows)
    c_ = np.concatenate(cols)
    w_ = np.concatenate(ws)
    graph = coo_matrix((w_, (r_, c_)), shape=(m * m, m * m)).tocsr()
    src_nodes = sorted({int(ids[min(r // f, m - 1), min(c // f, m - 1)]) for r, c in seeds})
    dist, pred, src = dijkstra(graph, directed=False, indices=src_nodes, return_predecessors=True, min_only=True)

    def trace(node):
        path = [node]
        while pred[path[-1]] >= 0:
            path.append(int(pred[path[-1]]))
        return path

    paths, kinds = [], []
    if len(src_nodes) > 1:
        fin = np.isfinite(dist[r_]) & np.isfinite(dist[c_])
        cross = fin & (src[r_] != src[c_])
        cand = {}
        for i, j, w in zip(r_[cross], c_[cross], (dist[r_] + w_ + dist[c_])[cross]):
            si, sj = int(src[i]), int(src[j])
            key = (min(si, sj), max(si, sj))
            if key not in cand or w < cand[key][0]:
                cand[key] = (float(w), int(i), int(j))
        pos = {s: k for k, s in enumerate(src_nodes)}
        if cand:
            keys = sorted(cand)
            mat = coo_matrix(
                ([cand[k][0] for k in keys], ([pos[k[0]] for k in keys], [pos[k[1]] for k in keys])),
                shape=(len(src_nodes), len(src_nodes)),
            )
            mst = minimum_spanning_tree(mat).tocoo()
            inv = {(pos[k[0]], pos[k[1]]): k for k in keys}
            for a, b in sorted(zip(mst.row.tolist(), mst.col.tolist())):
                key = inv.get((min(a, b), max(a, b)))
                if key is None:
                    continue
                _, i, j = cand[key]
                p = trace(i)[::-1] + trace(j)
                paths.append(p)
                kinds.append("local")
    # one main road leaves the region at the lowest reachable border cell
    border = np.concatenate([ids[0, :], ids[-1, :], ids[:, 0], ids[:, -1]])
    bdem = dem[: m * f : f, : m * f : f].ravel()[border]
    ok = np.isfinite(dist[border])
    if ok.any():
        b = int(border[ok][np.argmin(bdem[ok])])
        paths.append(trace(b))
        kinds.append("main")
    geoms = []
    keep_kinds = []
    for p, k in zip(paths, kinds):
        if len(p) < 2:
            continue
        pr, pc = np.divmod(np.asarray(p), m)
        x = transform.c + (pc * f + f / 2.0) * DEM_RES
        y = transform.f - (pr * f + f / 2.0) * DEM_RES
        line = LineString(np.column_stack([x, y])).simplify(DEM_RES * 0.75)
        if line.length > 0:
            geoms.append(line)
            keep_kinds.append(k)
    gdf = gpd.GeoDataFrame({"kind": keep_kinds}, geometry=geoms, crs=CRS_STR)
    road30 = _rasterize(geoms, dem.shape, transform, all_touched=True).astype(bool)
    return gdf, road30


# --------------------------------------------------------------------------- zones


def _lithology(rng, n, dem_rel, near_big_river, flat):
    theta = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64) * DEM_RES
    warp = _smooth_noise(rng, (n, n), DEM_RES, 6000.0) * 900.0
    u = np.cos(theta) * xx + np.sin(theta) * yy + warp
    u = u - u.min()
    edges = [0.0]
    while edges[-1] <= u.max():
        edges.append(edges[-1] + rng.uniform(700.0, 2600.0))
    bedrock_codes = [c for c, *_ in LITHOLOGY if c != 9]
    seq = []
    prev = None
    for _ in range(len(edges)):
        choices = [c for c in bedrock_codes if c != prev]
        prev = int(choices[rng.integers(len(choices))])
        seq.append(prev)
    band = np.clip(np.searchsorted(np.asarray(edges), u, side="right") - 1, 0, len(seq) - 1)
    lith = np.asarray(seq, dtype=np.uint8)[band]
    from scipy.ndimage import binary_closing, binary_opening

    alluvium = binary_opening(binary_closing(near_big_river & flat & (dem_rel < 0.5), iterations=2), iterations=2)
    lith[alluvium] = 9
    return lith, float(np.degrees(theta))


def _soil(rng, n, lith):
    res = DEM_RES * 3
    m = -(-n // 3)
    score = np.stack([_smooth_noise(rng, (m, m), res, 2500.0) for _ in SOIL])
    score = np.ascontiguousarray(np.repeat(np.repeat(score, 3, axis=1), 3, axis=2)[:, :n, :n])
    for code, favoured in SOIL_AFFINITY.items():
        sel = lith == code
        for rank, s in enumerate(favoured):
            score[s - 1][sel] += 1.6 - 0.4 * rank
    return (np.argmax(score, axis=0) + 1).astype(np.uint8)


def _landcover(rng, dem_rel, slope_deg, twi, water30, settle30, road30, lake_dist):
    n = dem_rel.shape[0]
    noise = _smooth_noise(rng, (n, n), DEM_RES, 1500.0)
    noise2 = _smooth_noise(rng, (n, n), DEM_RES, 2500.0)
    lc = np.full(dem_rel.shape, 2, dtype=np.uint8)  # forest
    crop = (slope_deg < 13.0 + 4.0 * noise) & (dem_rel < 0.55 + 0.1 * noise) & (noise > -0.6)
    lc[crop] = 1
    grass = ((dem_rel > 0.78 + 0.08 * noise2) & (noise2 > -0.2)) | ((noise2 > 1.4) & (slope_deg < 30))
    lc[grass & ~crop] = 3
    wet = (slope_deg < 3.0) & (twi > np.percentile(twi, 90)) & (lake_dist < 300.0)
    lc[wet] = 4
    lc[settle30] = 6
    lc[water30] = 5
    return lc


# --------------------------------------------------------------------------- landslides


def _hollow_depth(dem: np.ndarray, radius_m: float = HOLLOW_RADIUS_M) -> np.ndarray:
    """D = mean elevation within ``radius_m`` (a disk) minus the cell's elevation (m).

    Positive in hollows and on lower hillslopes, negative on noses and ridges. Near the region's
    edge the mean is taken over the part of the disk inside the region.
    """
    from scipy.signal import fftconvolve

    r = int(round(radius_m / DEM_RES))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = ((yy * yy + xx * xx) <= r * r).astype(np.float64)
    total = fftconvolve(dem.astype(np.float64), disk, mode="same")
    count = fftconvolve(np.ones(dem.shape), disk, mode="same")
    return total / np.maximum(count, 1.0) - dem


def soil_depth_multiplier(hollow: np.ndarray, hill: np.ndarray) -> tuple[np.ndarray, float]:
    """exp(HOLLOW_GAIN * clip(D / sd(D on hillslopes), -2, 2)) and that sd (m)."""
    sd = float(np.std(hollow[hill])) if hill.any() else float(np.std(hollow))
    sd = max(sd, 1e-6)
    return np.exp(HOLLOW_GAIN * np.clip(hollow / sd, -HOLLOW_CLIP, HOLLOW_CLIP)), sd


def _factor_of_safety(tanb, acc, rain30, cohesion, phi_deg, z):
    sinb = np.sin(np.arctan(tanb))
    cosb = np.cos(np.arctan(tanb))
    a_spec = acc * DEM_RES  # specific catchment area (m2/m)
    r_over_t = R_OVER_T_PER_1000MM * rain30 / 1000.0
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.clip(r_over_t * a_spec / np.maximum(sinb, 1e-3), 0.0, 1.0)
        fs = cohesion / (GAMMA_SOIL * z * np.maximum(sinb * cosb, 1e-6)) + (
            1.0 - w * GAMMA_WATER / GAMMA_SOIL
        ) * np.tan(np.radians(phi_deg)) / np.maximum(tanb, 1e-6)
    return np.minimum(fs, 50.0), w


def _plant_landslides(rng, fs, de, dn, hill, keep_out, transform, area_m2, n_cells_side):
    """Seed landslides where FS is low; ``keep_out`` (water, settlements, roads) is never touched."""
    from shapely.geometry import Polygon

    n = n_cells_side
    p = 1.0 / (1.0 + np.exp(np.clip((fs - TRIGGER_FS) / TRIGGER_WIDTH, -50.0, 50.0)))
    p = np.where(hill, p, 0.0).ravel()
    cand = np.flatnonzero(p > 1e-3)
    target_share = float(rng.uniform(0.012, 0.022))
    min_count = 30
    max_share = 0.03
    if cand.size == 0:
        return [], target_share
    # weighted random order without replacement (Efraimidis-Spirakis keys)
    keys = -np.log(rng.random(cand.size)) / p[cand]
    order = cand[np.argsort(keys, kind="stable")]
    occupied = np.zeros((n, n), dtype=bool)
    slides = []
    total = 0.0
    size_scale = 1.0 if area_m2 >= 25e6 else 0.75
    for idx in order:
        if total >= target_share * area_m2 and len(slides) >= min_count:
            break
        if total >= max_share * area_m2:
            break
        r, c = divmod(int(idx), n)
        if occupied[r, c]:
            continue
        length = float(np.clip(np.exp(rng.normal(math.log(120.0), 0.5)) * size_scale, 40.0, 450.0))
        width = float(max(20.0, length * rng.uniform(0.3, 0.6)))
        ux, uy = float(de[r, c]), float(dn[r, c])
        if ux == 0 and uy == 0:
            continue
        x0 = transform.c + (c + rng.uniform(0.2, 0.8)) * DEM_RES
        y0 = transform.f - (r + rng.uniform(0.2, 0.8)) * DEM_RES
        cx, cy = x0 + ux * length * 0.45, y0 + uy * length * 0.45
        t = np.linspace(0, 2 * np.pi, 28, endpoint=False)
        k = rng.normal(0, 0.06, 3)
        ph = rng.uniform(0, 2 * np.pi, 3)
        rad = 1.0 + k[0] * np.cos(2 * t + ph[0]) + k[1] * np.cos(3 * t + ph[1]) + k[2] * np.cos(5 * t + ph[2])
        # teardrop: narrower at the head (t = pi side), wider at the toe
        wmod = 1.0 + 0.18 * np.cos(t)
        a_ = 0.5 * length * rad * np.cos(t)
        b_ = 0.5 * width * rad * wmod * np.sin(t)
        px = cx + a_ * ux - b_ * uy
        py = cy + a_ * uy + b_ * ux
        poly = Polygon(np.column_stack([px, py])).buffer(0)
        if poly.is_empty:
            continue
        x_min, y_min, x_max, y_max = poly.bounds
        c0 = int((x_min - transform.c) // DEM_RES)
        c1 = int((x_max - transform.c) // DEM_RES)
        r0 = int((transform.f - y_max) // DEM_RES)
        r1 = int((transform.f - y_min) // DEM_RES)
        if c0 < 1 or r0 < 1 or c1 >= n - 1 or r1 >= n - 1:
            continue
        win = (slice(r0 - 1, r1 + 2), slice(c0 - 1, c1 + 2))
        if occupied[win].any():
            continue
        if not hill[r0 : r1 + 1, c0 : c1 + 1].mean() > 0.6 or keep_out[win].any():
            continue
        occupied[r0 : r1 + 1, c0 : c1 + 1] = True
        slides.append(
            {
                "geometry": poly,
                "row": r,
                "col": c,
                "head_x": float(x0),
                "head_y": float(y0),
                "length_m": round(length, 2),
                "width_m": round(width, 2),
                "area_m2": round(float(poly.area), 2),
                "fs": round(float(fs[r, c]), 4),
                "p_trigger": round(float(p[idx]), 4),
                "freshness": round(float(rng.uniform(0.35, 1.0)), 3),
            }
        )
        total += poly.area
    return slides, target_share


# --------------------------------------------------------------------------- imagery


def _imagery(rng, n, lc, dem, slide_polys, slide_fresh, water_gdf, rivers_gdf, road_geoms, settle_geoms):
    """Two Sentinel-2-like scenes (float32, [4, H, W]) at 10 m: before the landslides and after.

    Both share the land surface (land cover, fields, water, settlements, roads) and the sun; the
    pre-event scene has no scars, its own vegetation-vigour season and its own sensor noise, so a
    factor computed from it (NDVI) cannot carry the landslides.
    """
    f = int(round(DEM_RES / IMG_RES))
    N = n * f
    t10 = _geo_transform(ORIGIN_X, ORIGIN_Y, IMG_RES)
    shape = (N, N)
    # spectra: B2, B3, B4, B8
    S = {
        "forest": (0.030, 0.050, 0.030, 0.320),
        "crop": (0.045, 0.080, 0.060, 0.300),
        "grass": (0.045, 0.075, 0.065, 0.260),
        "wetland": (0.040, 0.060, 0.050, 0.170),
        "water": (0.060, 0.065, 0.045, 0.020),
        "built": (0.105, 0.105, 0.115, 0.170),
        "road": (0.120, 0.125, 0.135, 0.170),
        "bare": (0.085, 0.115, 0.150, 0.230),
        "scar": (0.110, 0.145, 0.190, 0.250),
    }
    lc10 = _upsample(lc, f)
    tex = _smooth_noise(rng, shape, IMG_RES, 120.0).astype(np.float32)
    tex2 = _smooth_noise(rng, shape, IMG_RES, 40.0).astype(np.float32)
    img = np.zeros((4, N, N), dtype=np.float32)
    for code, key in ((1, "crop"), (2, "forest"), (3, "grass"), (4, "wetland"), (5, "water"), (6, "built")):
        sel = lc10 == code
        for b in range(4):
            img[b][sel] = S[key][b]
    # vegetation vigour texture: NIR up / red down together
    veg = (lc10 == 1) | (lc10 == 2) | (lc10 == 3) | (lc10 == 4)
    vig = 0.10 * tex + 0.05 * tex2
    img[3][veg] *= (1.0 + vig[veg])
    img[2][veg] *= (1.0 - 0.8 * vig[veg])
    # field parcels in cropland: rotated grid, each parcel green / sparse / bare
    ang = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:N, 0:N].astype(np.float32)
    pu = (np.cos(ang) * xx + np.sin(ang) * yy) * IMG_RES / rng.uniform(90, 160)
    pv = (-np.sin(ang) * xx + np.cos(ang) * yy) * IMG_RES / rng.uniform(50, 110)
    del xx, yy
    pid = (np.floor(pu).astype(np.int64) * 7919 + np.floor(pv).astype(np.int64) * 104729) % 1_000_003
    del pu, pv
    lut = rng.random(1_000_003).astype(np.float32)
    state = lut[pid]
    del pid
    crop = lc10 == 1
    bare_field = crop & (state < 0.22)
    sparse_field = crop & (state >= 0.22) & (state < 0.45)
    for b in range(4):
        img[b][bare_field] = S["bare"][b] * (0.8 + 2.2 * state[bare_field])
        img[b][sparse_field] = 0.5 * (S["bare"][b] + S["crop"][b]) * (0.9 + 0.4 * state[sparse_field])
    del state
    # natural bare patches (quarries, eroded ridges) on any land
    bp = (_smooth_noise(rng, shape, IMG_RES, 150.0) > 2.6) & (lc10 != 5) & (lc10 != 6)
    for b in range(4):
        img[b][bp] = S["bare"][b] * (1.05 + 0.15 * tex[bp])
    # rivers and water bodies
    water10 = _rasterize(water_gdf.geometry, shape, t10, all_touched=False).astype(bool)
    if len(rivers_gdf):
        big = rivers_gdf[rivers_gdf["strahler"] >= max(2, int(rivers_gdf["strahler"].max()) - 2)]
        water10 |= _rasterize(big.geometry, shape, t10, all_touched=False).astype(bool)
    turb = 1.0 + 0.25 * tex2
    for b in range(4):
        img[b][water10] = S["water"][b] * turb[water10]
    # settlements (roof mix) and roads
    if settle_geoms:
        s10 = _rasterize(settle_geoms, shape, t10).astype(bool)
        mix = 1.0 + 0.35 * tex2[s10] + 0.25 * rng.standard_normal(int(s10.sum())).astype(np.float32)
        for b in range(4):
            img[b][s10] = S["built"][b] * mix
    if road_geoms:
        r10 = _rasterize(road_geoms, shape, t10, all_touched=True).astype(bool) & ~water10
        for b in range(4):
            img[b][r10] = S["road"][b]
    pre = img.copy()
    # another season: vigour shifts smoothly (+-3 %) between the two dates
    season = 1.0 + 0.03 * _smooth_noise(rng, shape, IMG_RES, 500.0).astype(np.float32)
    pre[3][veg] *= season[veg]
    pre[2][veg] /= season[veg]
    del season
    # landslide scars: fresh soil / rock, brighter than bare fields on average,
    # partly revegetated (freshness), with an internal head-to-toe pattern
    scar_mask = np.zeros(shape, dtype=bool)
    if slide_polys:
        ids = _rasterize(slide_polys, shape, t10, values=range(1, len(slide_polys) + 1), dtype="uint32")
        sel = ids > 0
        scar_mask = sel
        fresh = np.asarray([0.0] + list(slide_fresh), dtype=np.float32)[ids[sel]]
        mixf = np.clip(fresh * (0.85 + 0.25 * tex2[sel]), 0.0, 1.0)
        gain = 1.0 + 0.25 * fresh
        for b in range(4):
            img[b][sel] = (1.0 - mixf) * img[b][sel] + mixf * S["scar"][b] * gain
    # illumination from the DEM (sun azimuth 135 deg, elevation 45 deg)
    dem10 = _zoom_linear(dem, f)
    gy, gx = np.gradient(dem10, IMG_RES)
    slope = np.arctan(np.hypot(gx, gy))
    aspect = np.arctan2(-gx, gy)  # downslope direction, clockwise from north
    zen, az = np.radians(45.0), np.radians(135.0)
    cosi = np.cos(zen) * np.cos(slope) + np.sin(zen) * np.sin(slope) * np.cos(az - aspect)
    illum = np.clip(0.45 + 0.55 * cosi / np.cos(zen), 0.35, 1.35).astype(np.float32)
    del dem10, gy, gx, slope, aspect, cosi
    illum[water10] = 1.0
    for scene in (pre, img):
        for b in range(4):
            scene[b] *= illum
            scene[b] *= 1.0 + 0.03 * rng.standard_normal(shape).astype(np.float32)
            scene[b] += 0.002 * rng.standard_normal(shape).astype(np.float32)
        np.clip(scene, 0.0001, 1.0, out=scene)
    return pre, img, water10, scar_mask


