"""The one ``slidemap`` command: parse, call, print.

Every sub-command lives in ``slidemap.commands.<area>`` and registers itself with
:func:`register`. Errors a user can fix (:class:`~slidemap.errors.SlidemapError`)
become one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence

from slidemap import __version__
from slidemap.errors import SlidemapError

# Order here is the order in `slidemap --help`.
COMMAND_MODULES = ("region", "unet", "lsm", "serve", "dashboard")
# Commands that run TensorFlow (or report its device): it is configured before they start, so GPU
# memory growth, the XLA policy and mixed precision are the same whichever code path builds a model.
# `seed` is not among them: imagery and centre-cell layers need no TensorFlow, and a model layer's
# loader configures it in the process (or worker) that loads the model (4-5 s saved per imagery seed).
TENSORFLOW_COMMANDS = frozenset({"train", "detect", "inventory", "map", "serve", "status"})


QUIET_HELP = "no progress bars or server chatter; results and errors still print"


class Parser(argparse.ArgumentParser):
    """argparse with a "did you mean" for misspelt commands, choices and options."""

    def error(self, message: str) -> None:  # type: ignore[override]
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        unknown = re.search(r"unrecognized arguments: (\S+)", message)
        if choice:
            close = difflib.get_close_matches(choice.group(1), re.findall(r"'([^']*)'", choice.group(2)), n=1)
        elif unknown and unknown.group(1).startswith("--"):
            given = unknown.group(1).split("=")[0]
            # an option of another command (`train unet --region X`): name its owners, not itself
            owners = [c.prog for c in _leaf_commands(self) if any(given in a.option_strings for a in c._actions)]
            if len(owners) > 3:  # e.g. `slidemap --quiet status X`
                super().error(f"{message}; {given} is an option of the commands: give it after the command's name")
            if owners:
                super().error(f"{message}; {given} is an option of {', '.join(map(repr, owners))} only "
                              "(see this command's --help)")
            close = difflib.get_close_matches(given, sorted(_option_strings(self) - {given}), n=1)
        else:
            close = []
        super().error(f"{message}; did you mean {close[0]!r}?" if close else message)


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield child
                yield from _subparsers(child)


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {o for p in (parser, *_subparsers(parser)) for a in p._actions for o in a.option_strings if o.startswith("--")}


def _leaf_commands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for child in _subparsers(parser):
        if child.get_default("handler") is not None:
            yield child


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="slidemap",
        description="Landslide inventory and susceptibility maps, served as tiles.",
    )
    parser.add_argument("--version", action="version", version=f"slidemap {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    root = parser.add_subparsers(dest="command", metavar="COMMAND")
    root.required = True
    train = root.add_parser(
        "train", help="train models (unet, lsm)",
        description="Train a model family: unet (the landslide detector) or lsm (the susceptibility models).",
    ).add_subparsers(dest="train_kind", metavar="KIND", help="unet or lsm")
    train.required = True
    map_ = root.add_parser(
        "map", help="make whole-region maps", description="Make a whole-region map: susceptibility.",
    ).add_subparsers(dest="map_kind", metavar="KIND", help="susceptibility")
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
    for command in _leaf_commands(parser):  # one spelling of "quiet" on every command
        command.add_argument("-q", "--quiet", "--no-progress", dest="quiet", action="store_true", help=QUIET_HELP)
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
            from slidemap.compute.models.runtime import configure_tensorflow

            configure_tensorflow()
        return int(args.handler(args) or 0)
    except SlidemapError as exc:
        print(f"slidemap: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("slidemap: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `slidemap status --json | head`: the reader left, which is not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        return 0
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
