"""Susceptibility commands: ``train lsm`` and ``map susceptibility``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

PRESET_HELP = (
    "quick (tests, about a minute), demo (the multi-scale 3D-CNN and the peers, a few minutes), "
    "default (every network as a 3-seed ensemble and every peer; recommended for real work), "
    "paper (the paper's Table 5 settings, for replication)"
)
MODEL_NAMES = "small, medium, large, multiscale (3D-CNNs), gbdt_lr, logreg, random_forest (centre-cell peers)"


def register(groups: dict[str, Any]) -> None:
    train = groups["train"].add_parser(
        "lsm",
        help="train the susceptibility models (3D-CNNs, their fast forms, the simple peers)",
        description="Sample landslide cells and non-landslide cells (from the ground landslides occur "
        "on, and from anywhere, side by side), split them randomly and spatially blocked with a buffer "
        "(and by repeated spatial k-fold CV for small sample sets), train the 3D-CNNs and the "
        "scikit-learn peers on each split with early stopping and thresholds from an inner validation "
        "split, distil each window 3D-CNN into its fast form, rank the models by their blocked score, "
        "and record the best one with skill as the region's default. Writes versioned artefacts to "
        "REGION_DIR/models/lsm/ and a report to REGION_DIR/reports/lsm/<run_id>/.",
    )
    train.add_argument("region_dir", type=Path, metavar="REGION_DIR", help="a prepared region folder")
    train.add_argument("--preset", default="demo", choices=("quick", "demo", "default", "paper"), help=PRESET_HELP)
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set epochs=5 --set max_samples=none --set block_size=40 "
        "--set negatives=anywhere (an unknown key prints every key; they are the LsmConfig fields of "
        "training/lsm_config.py)",
    )
    train.add_argument("--epochs", type=int, help="shortcut for --set epochs=N")
    train.add_argument("--lr", type=float, help="shortcut for --set lr=X")
    train.add_argument("--batch", type=int, help="shortcut for --set batch=N")
    train.add_argument("--models", help=f"comma-separated models (default: the preset's); names: {MODEL_NAMES}")
    train.set_defaults(handler=_train)

    mp = groups["map"].add_parser(
        "susceptibility",
        help="whole-region susceptibility map (probability COG + 5 classes)",
        description="Map landslide susceptibility over the region with a trained lsm model (default: "
        "the region's default model, the best with skill of the latest `train lsm`). A window 3D-CNN "
        "maps either way: --mode window runs it cell by cell (the reference), --mode dense runs its "
        "fast form (the distilled dense network) in shared passes, --mode auto (default) takes the fast "
        "form when it agrees with the window model. Writes a probability COG with overviews, a 5-class "
        "COG (breaks from the model card) and a JSON of class areas and the share of known landslides "
        "per class.",
    )
    mp.add_argument("region_dir", type=Path, metavar="REGION_DIR", help="a prepared region folder")
    mp.add_argument("--model", help="a model name (newest version), a version hash or a model folder; "
                    "default: the region's default model (`slidemap status`)")
    mp.add_argument("--mode", default="auto", choices=("auto", "window", "dense"),
                    help="window models only: the window path, the fast form, or auto (default)")
    mp.add_argument("--out", type=Path, help="probability COG path (default REGION_DIR/maps/susceptibility_<model>-<version>.tif)")
    mp.add_argument("--block", type=int, help="block side in cells (default 512, 128 for the window path)")
    mp.add_argument("--dask", metavar="ADDRESS|local",
                    help="compute the blocks on a Dask cluster (local: one on this machine; or tcp://scheduler:8786, "
                    "whose workers must see REGION_DIR at the same path); same map as without")
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
    from slidemap.training.lsm_train import train_lsm

    models = tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models else None
    report = train_lsm(
        args.region_dir, preset=args.preset, overrides=_parse_overrides(args), models=models,
        progress=not args.quiet,
    )
    tag = "SYNTHETIC " if report["synthetic"] else ""
    other = [k for k in report["data"]["samplings"] if k != report["data"]["negatives"]]
    print(f"{tag}susceptibility models trained ({report['timings_s']['total']} s), ranked by {report['ranking_rule']}:")
    head = f"  {'rank':<4} {'model':<14} {'score':>6} {'95% interval':>16} {'random AUC':>10} {'blocked AUC':>11}"
    head += "".join(f" {k + ' blocked':>16}" for k in other)
    print(head)
    for e in report["ranking"]:
        per = report["models"][e["model"]]
        line = (f"  {e['rank']:<4} {e['model']:<14} {e['value']:>6.3f} [{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}] "
                f"{per['random']['roc_auc']:>10.3f} {per['blocked']['roc_auc']:>11.3f}")
        line += "".join(f" {per.get(k + '_blocked', {}).get('roc_auc', float('nan')):>16.3f}" for k in other)
        print(line + ("" if e["has_skill"] else "  NO SKILL"))
    for name, ff in report.get("fast_forms", {}).items():
        print(f"  fast form of {name}: r = {ff['pearson_r']:.3f}, AUC {ff['auc_fast']:.3f} vs {ff['auc_window']:.3f}, "
              f"{ff['speedup']:.0f}x the window path; tiles from the {'fast form' if ff['use'] else 'window path'}")
    print(f"default model: {report['default_model'] or 'none (no model has skill)'}")
    print(f"report: {Path(report['report_dir']).resolve() / 'report.md'}")
    return 0


def _map(args: argparse.Namespace) -> int:
    from slidemap.compute.maps.dask_run import check_address
    from slidemap.compute.maps.susceptibility import map_region

    check_address(args.dask)

    summary = map_region(
        args.region_dir, model=args.model, mode=args.mode, out=args.out, block=args.block,
        progress=not args.quiet, dask=args.dask,
    )
    tag = "SYNTHETIC " if summary["synthetic"] else ""
    path = {"dense": "fast form", "window": "window path", "centre": "centre cells"}[summary["mode"]]
    print(
        f"{tag}susceptibility map ({summary['model']} {summary['model_versions'][summary['model']]}, "
        f"{path}): {summary['cells']} cells in {summary['seconds']} s ({summary['cells_per_s']} cells/s)"
    )
    print(f"  probability: {Path(summary['probability']).resolve()}")
    print(f"  classes:     {Path(summary['classes_raster']).resolve()} (colour table and class names inside)")
    print(f"  styles:      {', '.join(Path(p).name for p in summary['styles'])} (QGIS .qml, OGC .sld) beside them")
    cls = summary["classes"]
    for i, name in enumerate(cls["names"]):
        share = cls.get("landslide_share", [float("nan")] * 5)[i]
        print(f"  {name:<10} <= {cls['breaks'][i]:.3f}  area {cls['area_share'][i]:.1%}  landslides {share:.1%}")
    return 0
