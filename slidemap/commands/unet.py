"""`slidemap train unet`, `slidemap detect` and `slidemap inventory`.

TensorFlow and the training modules are imported inside the handlers so `slidemap --help`
stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from slidemap.errors import InputError

log = logging.getLogger(__name__)


def _csv(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _pair(value: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in value.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError("expected two integers, e.g. 50,100") from exc
    return a, b


def register(groups: dict[str, Any]) -> None:
    p = groups["train"].add_parser(
        "unet",
        help="train the attention U-Net landslide detector (search, splits, report, artefact)",
        description="Train the attention U-Net on a prepared region (REGION_DIR) or on a chip folder "
        "(--chips DIR --out MODEL_DIR). Writes a model artefact and a report.",
    )
    p.add_argument("region", nargs="?", metavar="REGION_DIR", help="a prepared region folder")
    p.add_argument("--chips", metavar="DIR", help="train on a chip folder (images/ + masks/, PNG or GeoTIFF)")
    p.add_argument("--out", metavar="MODEL_DIR", help="where the model artefact goes (required with --chips; "
                   "default REGION/models/unet/<name>-<version>)")
    p.add_argument("--report-dir", metavar="DIR", help="report folder (default REGION/reports/unet/<run_id>, "
                   "or MODEL_DIR-report/ with --chips)")
    p.add_argument("--bands", type=_csv, help="bands to use (region) or the chip files' band names in order")
    p.add_argument("--mask-encoding", default="auto", choices=("auto", "gt127", "binary", "sparse"),
                   help="chip-folder masks: gt127 (first channel > 127), binary (non-zero), "
                   "sparse (0 unlabelled, 1 background, 2 landslide); auto decides from the values")
    p.add_argument("--preset", default="demo", choices=("quick", "demo", "paper"))
    p.add_argument("--name", help="model name (default attention-unet)")
    p.add_argument("--base-width", type=int)
    p.add_argument("--epochs", type=int, help="maximum epochs of the final model(s)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--patience", type=int, help="early-stopping patience (0 = off)")
    p.add_argument("--search-iterations", type=int, help="GP+EI iterations (0 = off: use --optimizer etc.)")
    p.add_argument("--search-epochs", type=int, help="epochs per search iteration")
    p.add_argument("--compare", action=argparse.BooleanOptionalAction, default=None,
                   help="the paper's four models (focal/BCE x two epoch budgets)")
    p.add_argument("--compare-epochs", type=_pair, metavar="E1,E2", help="epoch budgets of the comparison")
    p.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=None,
                   help="also a plain U-Net with BCE and a per-pixel gradient-boosting classifier")
    p.add_argument("--chip", type=int, help="chip size in pixels (region only; multiple of 16)")
    p.add_argument("--stride", type=int, help="chip step in pixels (region only)")
    p.add_argument("--negatives-ratio", type=float,
                   help="keep at most this many landslide-free chips per chip with a landslide (region)")
    p.add_argument("--splits", type=_csv, help="random,blocked (default both)")
    p.add_argument("--seed", type=int)
    p.add_argument("--optimizer", choices=("adam", "sgd"))
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--alpha", type=float)
    p.add_argument("--gamma", type=float)
    p.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=train_handler)

    d = groups["root"].add_parser(
        "detect",
        help="run a detector over a GeoTIFF or a chip folder",
        description="Write a float32 landslide-probability COG on INPUT's grid, or, for a chip folder, "
        "one 8-bit probability PNG per chip under the same file name.",
    )
    d.add_argument("model", metavar="MODEL_DIR")
    d.add_argument("input", metavar="INPUT", help="a GeoTIFF (any CRS, int or float) or a chip folder")
    d.add_argument("out", metavar="OUT", help="output COG, or a folder for chip input")
    d.add_argument("--band-order", type=_csv, help="the file's band names in order, e.g. B4,B3,B2,B8 or R,G,B,NIR")
    d.add_argument("--scale", type=float, help="reflectance = value / SCALE (e.g. 10000 for Sentinel-2 DN)")
    d.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true", help="no progress bar")
    d.set_defaults(handler=detect_handler)

    i = groups["root"].add_parser(
        "inventory",
        help="map landslide areas over a region: detect, mask, vectorise, compare with the inventory",
    )
    i.add_argument("region", metavar="REGION_DIR")
    i.add_argument("--model", metavar="MODEL_DIR", help="detector (default: the region's newest unet model)")
    i.add_argument("--threshold", type=float, help="probability cut (default: the model card's)")
    i.add_argument("--min-pixels", type=int, default=4, help="drop areas smaller than this many pixels")
    i.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true", help="no progress bar")
    i.set_defaults(handler=inventory_handler)


def _config(args: argparse.Namespace) -> Any:
    from slidemap.training.unet_train import preset

    overrides = {
        "base_width": args.base_width, "epochs": args.epochs, "batch_size": args.batch_size,
        "patience": args.patience, "search_iterations": args.search_iterations,
        "search_epochs": args.search_epochs, "compare": args.compare, "compare_epochs": args.compare_epochs,
        "baselines": args.baselines, "chip": args.chip, "stride": args.stride, "seed": args.seed,
        "optimizer": args.optimizer, "learning_rate": args.learning_rate, "alpha": args.alpha,
        "gamma": args.gamma, "bands": args.bands, "negatives_ratio": args.negatives_ratio,
        "splits": tuple(args.splits) if args.splits else None,
    }
    cfg = preset(args.preset, **overrides)
    if cfg.chip % 16:
        raise InputError(f"--chip {cfg.chip}: must be a multiple of 16")
    bad = [s for s in cfg.splits if s not in ("random", "blocked")]
    if bad:
        raise InputError(f"--splits {bad}: use random and/or blocked")
    return cfg


def train_handler(args: argparse.Namespace) -> int:
    from slidemap.training import unet_report, unet_train
    from slidemap.training.chips import chips_from_folder, chips_from_region

    cfg = _config(args)
    progress = not args.no_progress
    name = args.name or "attention-unet"
    if args.chips:
        if not args.out:
            raise InputError("--chips needs --out MODEL_DIR (where the model artefact goes)")
        chips = chips_from_folder(args.chips, bands=args.bands, mask_encoding=args.mask_encoding)
        models_root, out_dir = None, Path(args.out)
        report_dir = Path(args.report_dir) if args.report_dir else out_dir.parent / f"{out_dir.name}-report"
    elif args.region:
        region = Path(args.region)
        chips = chips_from_region(region, size=cfg.chip, stride=cfg.stride, bands=cfg.bands)
        models_root, out_dir = region / "models", Path(args.out) if args.out else None
        report_dir = Path(args.report_dir) if args.report_dir else region / "reports" / "unet" / unet_report.new_run_id()
    else:
        raise InputError("give REGION_DIR, or --chips DIR --out MODEL_DIR")
    log.info("%d chips of %d px, bands %s%s", len(chips), chips.images.shape[1], chips.bands,
             " (SYNTHETIC)" if chips.synthetic else "")
    try:
        result = unet_train.run(chips, cfg, progress=progress)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    model_path = unet_train.save_model(result, models_root, name, out_dir)
    from slidemap.compute.models.store import read_card

    card = read_card(model_path)
    data = {"path": chips.source.get("path"), "kind": chips.source.get("kind"), "chips": len(chips),
            "chip": int(chips.images.shape[1]), "bands": chips.bands, "units": chips.source.get("units"),
            "blocking": chips.source.get("blocking"), "fingerprint": card["training_data"]["fingerprint"]}
    report = unet_report.build_report(result, {result.primary.spec.name: card["version"]}, data)
    report["model_path"] = str(model_path)
    unet_report.write_report(report, report_dir, result)
    m = result.primary.metrics
    print(f"model: {model_path}")
    print(f"report: {report_dir / 'report.md'}")
    print(f"{result.primary.spec.name} [{result.primary.split} split]: F1 {m['f1']:.3f}  mIoU {m['miou']:.3f}  "
          f"PR-AUC {m['pr_auc']:.3f}  threshold {m['threshold']:.3f}" + ("  (SYNTHETIC)" if chips.synthetic else ""))
    return 0


def detect_handler(args: argparse.Namespace) -> int:
    from slidemap.compute.detection import detect_file

    summary = detect_file(args.model, args.input, args.out, band_order=args.band_order, scale=args.scale,
                          progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    return 0


def inventory_handler(args: argparse.Namespace) -> int:
    from slidemap.compute.inventory_map import map_inventory

    result = map_inventory(args.region, model_dir=args.model, threshold=args.threshold,
                           min_pixels=args.min_pixels, progress=not args.no_progress)
    print(f"areas: {result['areas_kept']} kept of {result['areas_detected']} detected -> {result['gpkg']}")
    obj = result.get("object_level") or {}
    if obj:
        print(f"object-level recall {obj.get('recall')}, precision {obj.get('precision')}")
    print(f"report: {result['report_dir']}/report.md")
    return 0
