"""Seeding throughput: `slidemap seed` vs gdal2tiles and rio-mbtiles on the 20 km demo region.

The imagery layer (B4, B3, B2), zooms 11-15, PNG tiles, 2 processes each:

* ``slidemap seed REGION --layer imagery --zoom 11-15 --format mbtiles --out X`` (fresh tile cache
  per run; default workers = CPU count, 8 x 8 metatiles, pyramid, PNG with zlib's run-length
  strategy), and the same with ``--png-level 6`` (the server's own zlib level) to show what the
  encoder setting buys;
* ``gdal2tiles.py --xyz --processes 2 -z 11-15 -r average -w none`` (a folder of PNGs) and
* ``rio mbtiles -j 2 --format PNG --resampling bilinear --zoom-levels 11..15`` (rio-mbtiles
  pins an old Shapely, so it lives in its own venv, /tmp/rio-venv, made here when missing; the
  peer is skipped with a message when that fails),

both peers reading the same COG through a byte VRT (gdal_translate -scale to the layer's
percentile rescale), so they skip the float rescale slidemap does per tile. Every arm is a whole
command in a fresh process, start-up included (``slidemap`` also starts TensorFlow: the CLI
configures it for every ``seed``), timed in turn, round after round, so all arms share the
machine's load; the table gives medians and the ratios per round.

Then computed layers' tiles/s on an empty tile cache (blocks already computed, and from nothing),
when the region has trained models.

``.venv/bin/python benchmarks/bench_seed.py [--region DIR] [--rounds 3]``; writes
benchmarks/results/seed.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import cpu_description as machine  # noqa: E402

SLIDEMAP = str(ROOT / ".venv" / "bin" / "slidemap")
RIO_VENV = Path(os.environ.get("SLIDEMAP_RIO_VENV", "/tmp/rio-venv"))
ZOOMS = (11, 15)


def sh(argv: list[str], **kw) -> float:
    """Wall seconds of one whole command (start-up included)."""
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
    return time.perf_counter() - t0


def make_region(work: Path) -> Path:
    region = work / "region"
    subprocess.run([SLIDEMAP, "demo-region", str(region), "--size-km", "20", "--seed", "0", "--quiet"], check=True)
    subprocess.run([SLIDEMAP, "prepare", str(region), "--quiet"], check=True)
    return region


def rio_mbtiles() -> str | None:
    rio = RIO_VENV / "bin" / "rio"
    if not rio.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(RIO_VENV)], check=True)
            subprocess.run([str(RIO_VENV / "bin" / "pip"), "install", "-q", "rio-mbtiles"], check=True)
        except (subprocess.CalledProcessError, OSError) as exc:
            print(f"rio-mbtiles: skipped (could not make {RIO_VENV}: {exc})", file=sys.stderr)
            return None
    return str(rio)


def byte_vrt(region: Path, out: Path) -> None:
    """The imagery layer's bands and rescale as a Byte VRT (what both peers tile)."""
    from slidemap.server.service import ServerSettings, build_service

    service = build_service(region, ServerSettings(cache_size_mb=0, report_device=False))
    layer = service.registry.get("imagery")
    argv = ["gdal_translate", "-q", "-of", "VRT", "-ot", "Byte", "-a_nodata", "0"]
    for i, (b, (lo, hi)) in enumerate(zip(layer.indexes, layer.rescale), start=1):
        argv += ["-b", str(b), f"-scale_{i}", str(lo), str(hi), "1", "255"]
    subprocess.run(argv + [str(layer.source), str(out)], check=True)


def tiles_and_bytes(path: Path) -> tuple[int, int]:
    """How many tiles, and their encoded bytes (archive overhead left out, so folders and MBTiles compare)."""
    if path.suffix == ".mbtiles":
        conn = sqlite3.connect(path)
        try:
            n, size = conn.execute("SELECT count(*), coalesce(sum(length(tile_data)), 0) FROM tiles").fetchone()
            return int(n), int(size)
        finally:
            conn.close()
    pngs = list(path.rglob("*.png"))
    return len(pngs), sum(p.stat().st_size for p in pngs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--region", type=Path, default=None, help="a prepared 20 km demo region (default: make one)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-seed-"))
    try:
        region = args.region.resolve() if args.region else make_region(work)
        vrt = work / "imagery-byte.vrt"
        byte_vrt(region, vrt)
        z = f"{ZOOMS[0]}-{ZOOMS[1]}"
        arms: dict[str, tuple[list[str], Path]] = {}

        def slidemap_arm(name: str, extra: list[str]) -> None:
            out = work / f"{name}.mbtiles"
            arms[name] = ([SLIDEMAP, "seed", str(region), "--layer", "imagery", "--zoom", z, "--format", "mbtiles",
                           "--out", str(out), "--cache-dir", str(work / f"cache-{name}"), "--quiet", *extra], out)

        slidemap_arm("slidemap seed", [])
        slidemap_arm("slidemap seed --png-level 6", ["--png-level", "6"])
        # The same seed through its Python entry point: what the CLI's TensorFlow start-up costs.
        out = work / "api.mbtiles"
        code = (f"from pathlib import Path; from slidemap.server.seed import seed; "
                f"seed(Path({str(region)!r}), ['imagery'], zoom={z!r}, out_format='mbtiles', out=Path({str(out)!r}), "
                f"cache_dir=Path({str(work / 'cache-api')!r}), progress=False)")
        arms["python -c 'seed(...)' (no TensorFlow start-up)"] = ([sys.executable, "-c", code], out)
        out = work / "gdal2tiles"
        arms["gdal2tiles --processes 2"] = (["gdal2tiles.py", "--xyz", "--processes", "2", "-z", z, "-r", "average",
                                             "-w", "none", "-q", str(vrt), str(out)], out)
        rio = rio_mbtiles()
        if rio:
            out = work / "rio.mbtiles"
            arms["rio mbtiles -j 2"] = ([rio, "mbtiles", str(vrt), str(out), "-j", "2", "--format", "PNG",
                                         "--resampling", "bilinear", "--zoom-levels", f"{ZOOMS[0]}..{ZOOMS[1]}",
                                         ], out)
        names = list(arms)
        seconds: dict[str, list[float]] = {n: [] for n in names}
        tiles: dict[str, int] = {}
        sizes: dict[str, float] = {}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]  # rotate: nobody always goes first
            for name in order:
                argv, out = arms[name]
                for p in (out, work / f"cache-{name}", work / "cache-api"):  # every run from nothing
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                seconds[name].append(sh(argv))
                tiles[name], size = tiles_and_bytes(out)
                sizes[name] = size / 1e6
                print(f"round {r + 1}: {name}: {tiles[name]} tiles in {seconds[name][-1]:.1f} s", flush=True)
        computed = computed_layers(region, work)
        write(region, names, seconds, tiles, sizes, computed, rio is not None, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def computed_layers(region: Path, work: Path) -> list[tuple[str, str, int, float, str]]:
    """(layer, zooms, tiles, seconds, note): blocks from nothing, then tiles only (blocks stored)."""
    from slidemap.server import seed as seed_mod

    rows = []
    for layer in ("susceptibility", "susceptibility/classes", "detection"):
        cache = work / "computed-cache"
        try:
            t0 = time.perf_counter()
            first = seed_mod.seed(region, [layer], cache_dir=cache, progress=False)
            cold = time.perf_counter() - t0
            shutil.rmtree(cache / "tiles")
            t0 = time.perf_counter()
            again = seed_mod.seed(region, [layer], cache_dir=cache, progress=False)
            warm = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - no trained model in the region: say so, go on
            rows.append((layer, "-", 0, 0.0, f"skipped: {str(exc).splitlines()[0][:120]}"))
            shutil.rmtree(cache, ignore_errors=True)
            continue
        s = first.layers[0]
        zooms = f"{s.zooms[0]}-{s.zooms[1]}"
        rows.append((layer, zooms, s.tiles, cold, f"empty block store: {s.blocks_computed} model blocks computed"))
        rows.append((layer, zooms, s.tiles, warm, "blocks stored, empty tile cache"))
        assert again.layers[0].blocks_computed == 0
        shutil.rmtree(cache, ignore_errors=True)
    return rows


def write(region, names, seconds, tiles, sizes, computed, have_rio, args) -> None:
    med = {n: statistics.median(seconds[n]) for n in names}
    rate = {n: tiles[n] / med[n] for n in names}
    ours = names[0]
    lines = [
        "## Seeding",
        "",
        f"- machine: {machine()}; load average at the end {os.getloadavg()[0]:.1f} (rounds alternate the tools, ratios are per round)",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `.venv/bin/python benchmarks/bench_seed.py{' --region DIR' if args.region else ''} "
        f"--rounds {args.rounds}` (20 km demo region, `slidemap demo-region --size-km 20 --seed 0` + `prepare`)",
        f"- work: the imagery layer (B4, B3, B2 rescaled to 8 bits), zooms {ZOOMS[0]}-{ZOOMS[1]}, PNG, 2 processes "
        "per tool; each time is a whole command in a fresh process, **start-up included** (Python and the "
        "region for slidemap; the `python -c` row leaves the CLI's argument parsing and imports out)",
        "- peers read a Byte VRT over the same COG (`gdal_translate -ot Byte -scale`); gdal2tiles writes a folder "
        "of PNGs, rio-mbtiles and slidemap one MBTiles file (slidemap also fills its tile cache)",
        "",
        "| command | tiles | tile bytes (MB) | seconds (median of rounds) | tiles/s | its time / `slidemap seed` time (median of per-round ratios; > 1: slidemap faster) |",
        "|---|---|---|---|---|---|",
    ]
    for n in names:
        ratios = [a / b for a, b in zip(seconds[n], seconds[ours])]
        ratio = "-" if n == ours else f"{statistics.median(ratios):.2f}x"
        lines.append(f"| `{n}` | {tiles[n]} | {sizes[n]:.1f} | {med[n]:.1f} ({', '.join(f'{s:.1f}' for s in seconds[n])}) | "
                     f"{rate[n]:.0f} | {ratio} |")
    if not have_rio:
        lines += ["", "rio-mbtiles: skipped (its venv could not be made; see stderr)."]
    lines += [
        "",
        "slidemap seed: 8 x 8 metatiles (one warp per 64 tiles), zooms 12-14 averaged 2 x 2 from zoom 15's data "
        "(rescaled after averaging), zoom 11 read from the COG's overviews; PNG written by Pillow with zlib's "
        "run-length strategy after PNG's row filters, opaque tiles without an alpha channel (the `--png-level 6` "
        "row: zlib level 6, the server's). Tile bytes: the sum of the tiles' PNGs (the peers' tiles are RGBA).",
        "",
        "### Computed layers (empty tile cache, `seed(..., workers=CPU count)`, in-process call)",
        "",
        "| layer | zooms | tiles | seconds | tiles/s | note |",
        "|---|---|---|---|---|---|",
    ]
    for layer, zooms, n, s, note in computed:
        lines.append(f"| {layer} | {zooms} | {n} | {s:.1f} | {n / s if s else 0:.0f} | {note} |")
    lines.append("")
    out = ROOT / "benchmarks" / "results" / "seed.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(out.read_text())


if __name__ == "__main__":
    main()
