"""The one ``slidemap`` command: parse, call, print.

Every sub-command lives in ``slidemap.commands.<area>`` and registers itself with
:func:`register`. Errors a user can fix (:class:`~slidemap.errors.SlidemapError`)
become one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from slidemap import __version__
from slidemap.errors import SlidemapError

# Order here is the order in `slidemap --help`.
COMMAND_MODULES = ("region", "unet", "lsm", "serve", "dashboard")
# Commands that run TensorFlow (or report its device): it is configured before they start, so GPU
# memory growth, the XLA policy and mixed precision are the same whichever code path builds a model.
TENSORFLOW_COMMANDS = frozenset({"train", "detect", "inventory", "map", "serve", "seed", "status"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slidemap",
        description="Landslide inventory and susceptibility maps, served as tiles.",
    )
    parser.add_argument("--version", action="version", version=f"slidemap {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    root = parser.add_subparsers(dest="command", metavar="COMMAND")
    root.required = True
    train = root.add_parser("train", help="train models (unet, lsm)").add_subparsers(
        dest="train_kind", metavar="KIND"
    )
    train.required = True
    map_ = root.add_parser("map", help="make whole-region maps").add_subparsers(
        dest="map_kind", metavar="KIND"
    )
    map_.required = True
    groups = {"root": root, "train": train, "map": map_}
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"slidemap.commands.{name}")
        except ModuleNotFoundError as exc:  # a command area not installed in this build
            if exc.name != f"slidemap.commands.{name}":
                raise
            continue
        module.register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Progress bars carry the narrative; logs are for warnings unless -v is given.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        if args.command in TENSORFLOW_COMMANDS:
            from slidemap.compute.inference import configure_tensorflow

            configure_tensorflow()
        return int(args.handler(args) or 0)
    except SlidemapError as exc:
        print(f"slidemap: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("slidemap: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not a user error: one line, traceback on request
        if args.verbose:
            raise
        print(
            f"slidemap: internal error: {type(exc).__name__}: {exc} "
            "(run with -v for the traceback and report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
