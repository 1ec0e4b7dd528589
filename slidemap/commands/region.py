"""Region commands: ``demo-region``, ``prepare``, ``status``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(groups: dict[str, Any]) -> None:
    root = groups["root"]

    demo = root.add_parser(
        "demo-region",
        help="generate the SYNTHETIC demo region",
        description="Write a deterministic, self-consistent SYNTHETIC region (DEM, imagery, "
        "thematic rasters, vectors, planted landslides) with its region.toml.",
    )
    demo.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder to write the region into")
    demo.add_argument("--size-km", type=float, default=20.0, help="side of the square region (default 20)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(handler=_demo_region)

    prepare = root.add_parser(
        "prepare",
        help="build a region's analysis stack",
        description="Validate region.toml and build the factor COG, imagery COG, labels and "
        "normalisation into REGION_DIR/build; unchanged inputs are reused.",
    )
    prepare.add_argument("region_dir", type=Path, metavar="REGION_DIR", help="a folder with region.toml")
    prepare.set_defaults(handler=_prepare)

    status = root.add_parser("status", help="what is built for a region", description="List what is built, with absolute paths.")
    status.add_argument("region_dir", type=Path, metavar="REGION_DIR", help="a region folder")
    status.add_argument("--json", action="store_true", help="machine-readable JSON")
    status.set_defaults(handler=_status)


def _demo_region(args: argparse.Namespace) -> int:
    from slidemap.compute.demo.region import generate_demo_region
    from slidemap.errors import InputError

    if args.size_km <= 0:
        raise InputError(f"--size-km {args.size_km}: give a positive size, e.g. --size-km 20")
    manifest = generate_demo_region(args.out_dir, size_km=args.size_km, seed=args.seed)
    print(f"SYNTHETIC demo region written: {Path(manifest).resolve()}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from slidemap.compute.region.prepare import prepare_region

    result = prepare_region(args.region_dir, show_progress=not args.quiet)
    h, w = result.grid.shape
    print(
        f"prepared {result.build_dir} in {result.seconds:.1f} s: {w} x {h} cells, "
        f"{len(result.factor_names)} factors ({', '.join(result.factor_names)}); "
        f"built {len(result.built)} steps, reused {len(result.reused)}"
    )
    inv = result.inventory
    for item in inv.get("inputs", []):
        dropped = "; ".join(f"{n} {why}" for why, n in item["dropped"].items()) or "none"
        print(f"  inventory {item['file']}: {item['read']} features read, {item['kept']} kept "
              f"({item['landslides']} landslides, {item['non_landslides']} non-landslides); dropped: {dropped}")
    if inv.get("layers"):
        layers = ", ".join(f"{name} {n}" for name, n in inv["layers"].items())
        print(f"  inventory layers in {result.build_dir / 'inventory.gpkg'}: {layers} (styled for QGIS)")
    return 0


def _status(args: argparse.Namespace) -> int:
    from slidemap.compute.models.status import format_status, region_status

    status = region_status(args.region_dir)
    print(status.model_dump_json(indent=2) if args.json else format_status(status))
    return 0
