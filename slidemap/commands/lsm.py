"""Susceptibility commands: ``train lsm`` and ``map susceptibility``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

PRESET_HELP = "quick (tests, < 2 min), demo (all 8 models on the demo region, minutes), paper (the paper's settings)"


def register(groups: dict[str, Any]) -> None:
    train = groups["train"].add_parser(
        "lsm",
        help="train the susceptibility models (3D-CNNs, dense model, baselines)",
        description="Sample landslide / non-landslide cells, split them randomly and spatially "
        "blocked (80/20), train the multi-scale and single-scale 3D-CNNs, the dense multi-scale "
        "model and the scikit-learn baselines on each split, and write versioned artefacts to "
        "REGION_DIR/models/lsm/ and a report to REGION_DIR/reports/lsm/<run_id>/.",
    )
    train.add_argument("region_dir", type=Path, metavar="REGION_DIR")
    train.add_argument("--preset", default="demo", choices=("quick", "demo", "paper"), help=PRESET_HELP)
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set epochs=5 --set max_samples=none --set block_size=40 "
        "(keys: max_samples neg_ratio buffer block_size epochs dense_epochs batch lr widths "
        "dense_units dense_width gbdt_trees rf_trees area_sample seed use_detected top_up)",
    )
    train.add_argument("--epochs", type=int, help="shortcut for --set epochs=N")
    train.add_argument("--lr", type=float, help="shortcut for --set lr=X")
    train.add_argument("--batch", type=int, help="shortcut for --set batch=N")
    train.add_argument("--models", help="comma-separated subset (default: all eight)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=_train)

    mp = groups["map"].add_parser(
        "susceptibility",
        help="whole-region susceptibility map (probability COG + 5 Jenks classes)",
        description="Map landslide susceptibility over the region with a trained lsm model: "
        "--mode window runs the multi-scale 3D-CNN cell by cell (the reference), --mode dense the "
        "fully convolutional multi-scale model in shared passes. Writes a probability COG with "
        "overviews, a 5-class Jenks natural-breaks COG and a JSON of breaks, class areas and the "
        "share of known landslides per class.",
    )
    mp.add_argument("region_dir", type=Path, metavar="REGION_DIR")
    mp.add_argument("--model", help="artefact name (newest version) or folder; default multiscale (window) / multiscale_dense (dense)")
    mp.add_argument("--mode", default="dense", choices=("window", "dense"), help="default dense")
    mp.add_argument("--out", type=Path, help="probability COG path (default REGION_DIR/maps/susceptibility_<model>-<version>.tif)")
    mp.add_argument("--block", type=int, help="block side in cells (default 512 dense, 128 window)")
    mp.add_argument("--quiet", action="store_true", help="no progress bar")
    mp.set_defaults(handler=_map)


def _parse_overrides(args: argparse.Namespace) -> dict[str, str]:
    from slidemap.errors import InputError

    overrides: dict[str, str] = {}
    for item in args.overrides:
        if "=" not in item:
            raise InputError(f"--set {item}: write KEY=VALUE, e.g. --set epochs=5")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value.strip()
    for key in ("epochs", "lr", "batch"):
        if getattr(args, key) is not None:
            overrides[key] = str(getattr(args, key))
    return overrides


def _train(args: argparse.Namespace) -> int:
    from slidemap.training.lsm_train import ALL_MODELS, train_lsm

    models = tuple(m.strip() for m in args.models.split(",")) if args.models else ALL_MODELS
    report = train_lsm(
        args.region_dir, preset=args.preset, overrides=_parse_overrides(args), models=models,
        progress=not args.quiet,
    )
    tag = "SYNTHETIC " if report["synthetic"] else ""
    print(f"{tag}susceptibility models trained ({report['timings_s']['total']} s); test scores:")
    print(f"  {'model':<18} {'random AUC':>10} {'blocked AUC':>11} {'blocked PR-AUC':>14}")
    for name, per in report["models"].items():
        print(
            f"  {name:<18} {per['random']['roc_auc']:>10.3f} {per['blocked']['roc_auc']:>11.3f} "
            f"{per['blocked']['pr_auc']:>14.3f}"
        )
    print(f"report: {Path(report['report_dir']).resolve() / 'report.md'}")
    return 0


def _map(args: argparse.Namespace) -> int:
    from slidemap.compute.susceptibility import map_region

    summary = map_region(
        args.region_dir, model=args.model, mode=args.mode, out=args.out, block=args.block,
        progress=not args.quiet,
    )
    tag = "SYNTHETIC " if summary["synthetic"] else ""
    print(
        f"{tag}susceptibility map ({summary['model']} {summary['model_versions'][summary['model']]}, "
        f"{summary['mode']}): {summary['cells']} cells in {summary['seconds']} s "
        f"({summary['cells_per_s']} cells/s)"
    )
    print(f"  probability: {Path(summary['probability']).resolve()}")
    print(f"  classes:     {Path(summary['classes_raster']).resolve()}")
    cls = summary["classes"]
    for i, name in enumerate(cls["names"]):
        share = cls.get("landslide_share", [float("nan")] * 5)[i]
        print(f"  {name:<10} <= {cls['breaks'][i]:.3f}  area {cls['area_share'][i]:.1%}  landslides {share:.1%}")
    return 0
