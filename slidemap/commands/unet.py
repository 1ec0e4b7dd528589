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

from slidemap.compute.region.layout import RegionLayout
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
    p.add_argument("--preset", default="demo", choices=("quick", "demo", "paper"),
                   help="quick: smoke runs; demo (default): width 16 trained to convergence, minutes on 2 cores; "
                   "paper: the paper's width 64, 30 GP+EI trials and four-model comparison")
    p.add_argument("--name", help="model name (default attention-unet)")
    p.add_argument("--base-width", type=int, help="filters of the first level (doubling per level)")
    p.add_argument("--epochs", type=int, help="maximum epochs (early stopping decides)")
    p.add_argument("--epoch-chips", type=int, help="chips drawn per epoch")
    p.add_argument("--min-epochs", type=int, help="never stop before this many epochs")
    p.add_argument("--batch-size", type=int, help="chips per optimiser step")
    p.add_argument("--patience", type=int, help="epochs without a better validation score before stopping (0 = off)")
    p.add_argument("--monitor", choices=("pr_auc", "f1"), help="validation score early stopping watches")
    p.add_argument("--refit", action=argparse.BooleanOptionalAction, default=None,
                   help="refit on fit + validation for the epoch count early stopping found "
                        "(demo preset: on for a chip folder, and for a region whose training part holds fewer "
                        "than 100 landslide areas, --set scene_refit_below_areas=N; given, it decides for every source)")
    p.add_argument("--loss", choices=("focal", "focal+dice"), help="loss of the attention U-Net")
    p.add_argument("--dice-weight", type=float, help="weight of the Dice term in focal+dice")
    p.add_argument("--search-iterations", type=int, help="GP+EI trials (0 = off: use --optimizer etc.)")
    p.add_argument("--search-epochs", type=int, help="epochs per search trial")
    p.add_argument("--search-space", choices=("focal", "paper"),
                   help="focal: alpha and gamma at the fixed optimizer and rate; paper: also optimizer and rate")
    p.add_argument("--compare", action=argparse.BooleanOptionalAction, default=None,
                   help="the paper's four models (focal/BCE x two epoch budgets)")
    p.add_argument("--compare-epochs", type=_pair, metavar="E1,E2", help="epoch budgets of the comparison")
    p.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=None,
                   help="also a plain U-Net with BCE and a per-pixel gradient-boosting classifier")
    p.add_argument("--chip", type=int, help="chip size in pixels (region only; multiple of 16)")
    p.add_argument("--buffer", type=int, help="gap between the sides of the blocked split: px for a region "
                   "(default 16), index positions (default 4) or px for a chip folder")
    p.add_argument("--positive-share", type=float, help="share of training chips drawn to contain a landslide")
    p.add_argument("--normalisation", choices=("auto", "scene", "chip"),
                   help="robust per-image normalisation: each scene (regions) or each chip (chip folders, auto)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="flips, quarter turns, brightness/contrast/gamma jitter")
    p.add_argument("--splits", type=_csv, help="blocked and/or random (default: the preset's)")
    p.add_argument("--seed", type=int, help="random seed of splits, sampling and weights (default 0)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), help="optimiser when the search is off (default adam)")
    p.add_argument("--learning-rate", type=float, help="peak learning rate when the search does not set it")
    p.add_argument("--alpha", type=float, help="focal loss alpha (landslide weight) when the search is off")
    p.add_argument("--gamma", type=float, help="focal loss gamma (focusing) when the search is off")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                   help="override any setting after the preset and the flags above, validated, e.g. --set epochs=40 "
                   "--set loss=focal+dice --set splits=blocked,random (an unknown key prints every key)")
    p.set_defaults(handler=train_handler)

    d = groups["root"].add_parser(
        "detect",
        help="run a detector over a GeoTIFF or a chip folder",
        description="Write a float32 landslide-probability COG on INPUT's grid (the model's threshold in its "
        "tags), or, for a chip folder, one 8-bit probability PNG per chip under the same file name. "
        "Usage: slidemap detect MODEL_DIR INPUT OUT, or slidemap detect INPUT OUT --region REGION [--model NAME|VERSION].",
    )
    d.add_argument("paths", nargs="+", metavar="[MODEL] INPUT OUT",
                   help="MODEL: a model folder, or with --region a model name or version (default: the "
                   "region's default detector); INPUT: a GeoTIFF (any CRS, int or float) or a chip folder; "
                   "OUT: output COG, or a folder for chip input")
    d.add_argument("--region", metavar="REGION_DIR", help="resolve MODEL (or --model) among this region's detectors")
    d.add_argument("--model", metavar="NAME|VERSION|DIR", help="the detector, when MODEL is not given positionally")
    d.add_argument("--mask", action="store_true",
                   help="also write a 0/1 mask cut at the model's threshold (OUT_mask.tif, or OUT/masks/)")
    d.add_argument("--band-order", type=_csv, help="the file's band names in order, e.g. B4,B3,B2,B8 or R,G,B,NIR")
    d.add_argument("--scale", type=float, help="reflectance = value / SCALE (e.g. 10000 for Sentinel-2 DN)")
    d.add_argument("--dask", metavar="ADDRESS|local",
                   help="compute a GeoTIFF chunk by chunk on a Dask cluster (local: one on this machine; or "
                   "tcp://scheduler:8786, whose workers must see INPUT and MODEL at the same paths); same output")
    d.set_defaults(handler=detect_handler)

    i = groups["root"].add_parser(
        "inventory",
        help="map landslide areas over a region: detect, mask, vectorise, compare with the inventory",
        description="Run the detector over the region's imagery, cut at the model's threshold, vectorise the "
        "landslide areas into a GeoPackage beside the probability COG, and compare them with the region's "
        "inventory (areas, overlap). Writes to REGION_DIR/reports/inventory/RUN_ID/.",
    )
    i.add_argument("region", metavar="REGION_DIR", help="a prepared region folder")
    i.add_argument("--model", metavar="NAME|VERSION|DIR",
                   help="detector: a name, a version hash or a folder (default: the region's default detector, "
                   "the best by blocked F1 with skill)")
    i.add_argument("--threshold", type=float, help="probability cut (default: the model's own, from its card)")
    i.add_argument("--min-pixels", type=int, default=4, help="drop areas smaller than this many pixels")
    i.set_defaults(handler=inventory_handler)


def _config(args: argparse.Namespace) -> Any:
    from slidemap.training.unet_train import preset

    overrides = {
        "base_width": args.base_width, "epochs": args.epochs, "epoch_chips": args.epoch_chips,
        "min_epochs": args.min_epochs, "batch_size": args.batch_size, "patience": args.patience,
        "monitor": args.monitor, "refit": args.refit, "loss": args.loss, "dice_weight": args.dice_weight,
        "search_iterations": args.search_iterations, "search_epochs": args.search_epochs,
        "search_space": args.search_space, "compare": args.compare, "compare_epochs": args.compare_epochs,
        "baselines": args.baselines, "chip": args.chip, "buffer": args.buffer,
        "positive_share": args.positive_share, "normalisation": args.normalisation, "augment": args.augment,
        "seed": args.seed, "optimizer": args.optimizer, "learning_rate": args.learning_rate, "alpha": args.alpha,
        "gamma": args.gamma, "bands": args.bands, "splits": tuple(args.splits) if args.splits else None,
    }
    cfg = preset(args.preset, **overrides)
    settings: dict[str, str] = {}
    for item in getattr(args, "settings", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {item}: write KEY=VALUE, e.g. --set epochs=40")
        settings[key.strip()] = value
    if settings:
        from slidemap.training.unet_train import apply_settings

        try:
            cfg = apply_settings(cfg, settings)
        except ValueError as exc:
            raise InputError(str(exc)) from None
    from slidemap.training.unet import TILE_MULTIPLE

    if cfg.chip % TILE_MULTIPLE or cfg.chip < TILE_MULTIPLE:
        raise InputError(f"--chip {cfg.chip}: must be a positive multiple of {TILE_MULTIPLE}")
    bad = [s for s in cfg.splits if s not in ("random", "blocked")]
    if bad or not cfg.splits:
        raise InputError(f"--splits {bad or '(empty)'}: use blocked and/or random")
    for flag, value, lo, hi in (("--alpha", cfg.alpha, 0.0, 1.0), ("--gamma", cfg.gamma, 0.0, 5.0),
                                ("--positive-share", cfg.positive_share, 0.0, 1.0)):
        if not lo <= value <= hi:
            raise InputError(f"{flag} {value}: must be in [{lo}, {hi}]")
    for flag, value in (("--epochs", cfg.epochs), ("--epoch-chips", cfg.epoch_chips),
                        ("--batch-size", cfg.batch_size), ("--base-width", cfg.base_width)):
        if value is not None and value < 1:
            raise InputError(f"{flag} {value}: must be at least 1")
    return cfg


def train_handler(args: argparse.Namespace) -> int:
    from slidemap.training import unet_report, unet_train
    from slidemap.training.chips import chips_from_folder
    from slidemap.training.scene import scene_from_region

    cfg = _config(args)
    progress = not args.quiet
    name = args.name or "attention-unet"
    from slidemap.compute.models.store import new_run_id

    run_id = new_run_id()
    region = None
    if args.chips:
        if not args.out:
            raise InputError("--chips needs --out MODEL_DIR (where the model artefact goes)")
        source: Any = chips_from_folder(args.chips, bands=args.bands, mask_encoding=args.mask_encoding)
        models_root, out_dir = None, Path(args.out)
        report_dir = Path(args.report_dir) if args.report_dir else out_dir.parent / f"{out_dir.name}-report"
        log.info("%d chips of %d px, bands %s", len(source), source.images.shape[1], source.bands)
    elif args.region:
        region = Path(args.region)
        source = scene_from_region(region, bands=cfg.bands)
        layout = RegionLayout(region)
        models_root, out_dir = layout.models, Path(args.out) if args.out else None
        report_dir = Path(args.report_dir) if args.report_dir else layout.report_dir("unet", run_id)
        log.info("scene %dx%d px, bands %s%s", source.shape[1], source.shape[0], source.bands,
                 " (SYNTHETIC)" if source.synthetic else "")
    else:
        raise InputError("give REGION_DIR, or --chips DIR --out MODEL_DIR")
    try:
        result = unet_train.run(source, cfg, progress=progress)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    saved = unet_train.save_models(result, run_id, models_root, name, out_dir)
    default = unet_train.record_region_default(region, saved) if region is not None and out_dir is None else None
    primary = next(s for s in saved if s.trained is result.primary)
    data = {"path": result.source.get("path"), "kind": result.source.get("kind"), "chip": result.chip,
            "bands": result.bands, "units": result.source.get("units"), "blocking": result.source.get("blocking"),
            "fingerprint": result.fingerprint}
    report = unet_report.build_report(result, {s.name: s.card["version"] for s in saved}, data, run_id,
                                      f"{default.name} {default.card['version']}" if default else None)
    report["model_path"] = str(primary.path)
    report["model_paths"] = {s.name: str(s.path) for s in saved}
    unet_report.write_report(report, report_dir, result)
    print(f"model: {primary.path}")
    print(f"report: {report_dir / 'report.md'}")
    for s in saved:
        m, sk = s.trained.metrics, s.trained.skill
        flag = ("" if sk.get("has_skill") else "  NO SKILL") if sk.get("split", "blocked") == "blocked" else \
            "  (random split: not evidence of skill on new ground, never the default)"
        print(f"{s.name} [{s.trained.split} split]: F1 {m['f1']:.3f} (95% CI {sk['ci95'][0]:.3f}-{sk['ci95'][1]:.3f})  "
              f"mIoU {m['miou']:.3f}  PR-AUC {m['pr_auc']:.3f}  threshold {m['threshold']:.3f}"
              + flag + ("  (SYNTHETIC)" if result.synthetic else ""))
    if region is not None and out_dir is None:
        if result.primary.split != "blocked":
            print("default detector: unchanged (this run has no blocked split)")
        else:
            print(f"default detector: {default.name} {default.card['version']}" if default
                  else "default detector: none (no detector of this run has skill)")
    return 0


def _detect_model(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """(model folder, input, output) from ``[MODEL] INPUT OUT``, ``--model`` and ``--region``."""
    paths = list(args.paths)
    if len(paths) == 3:
        if args.model:
            raise InputError("give the model either as the first argument or with --model, not both")
        spec: str | None = paths.pop(0)
    elif len(paths) == 2:
        spec = args.model
        if spec is None and not args.region:
            raise InputError("detect needs MODEL INPUT OUT, or INPUT OUT with --region REGION (its default "
                             "detector) or --model")
    else:
        raise InputError("detect takes [MODEL] INPUT OUT: give the input and the output (and a model or --region)")
    if spec is not None and Path(spec).is_dir() and (not args.region or "/" in spec or spec.startswith(".")):
        return Path(spec), Path(paths[0]), Path(paths[1])
    if not args.region:
        raise InputError(f"{spec}: not a model folder; give a folder, or --region REGION to resolve a name or version")
    from slidemap.compute.models.select import resolve_model

    info = resolve_model(args.region, "detection", spec, allow_path=True)
    return info.path, Path(paths[0]), Path(paths[1])


def _warn_if_no_skill(model_dir: Path) -> None:
    """One line on stderr when the chosen detector showed no skill on its blocked test."""
    import sys

    from slidemap.compute.models.select import has_skill, skill_note
    from slidemap.compute.models.store import read_card

    card = read_card(model_dir)
    if "skill" in card and not has_skill(card):
        print(f"slidemap: warning: {model_dir}: {skill_note(card)} on its blocked test; its detections are not "
              "reliable", file=sys.stderr)


def detect_handler(args: argparse.Namespace) -> int:
    from slidemap.compute.maps.detection import detect_file

    model_dir, input_path, out = _detect_model(args)
    _warn_if_no_skill(model_dir)
    from slidemap.compute.maps.dask_run import check_address

    check_address(args.dask)
    if args.dask and input_path.is_dir():
        raise InputError(f"--dask: {input_path} is a chip folder; --dask runs GeoTIFF input (drop --dask for chips)")
    summary = detect_file(model_dir, input_path, out, band_order=args.band_order, scale=args.scale,
                          progress=not args.quiet, mask=args.mask, dask=args.dask)
    summary["model_dir"] = str(model_dir)
    print(json.dumps(summary, indent=2))
    return 0


def inventory_handler(args: argparse.Namespace) -> int:
    from slidemap.compute.maps.inventory import map_inventory

    from slidemap.compute.maps.inventory import pick_detector

    model_dir = pick_detector(Path(args.region), args.model)
    _warn_if_no_skill(model_dir)
    result = map_inventory(args.region, model_dir=model_dir, threshold=args.threshold,
                           min_pixels=args.min_pixels, progress=not args.quiet)
    print(f"areas: {result['areas_kept']} kept of {result['areas_detected']} detected -> {result['gpkg']}")
    obj = result.get("object_level") or {}
    if obj:
        print(f"object-level recall {obj.get('recall')}, precision {obj.get('precision')}")
    print(f"detector: {result['model_path']} (threshold {result['threshold']:.3f})")
    print(f"report: {result['report_dir']}/report.md")
    return 0
