"""The CLI as a user meets it: help everywhere, one --quiet, "did you mean", a closed pipe is no error."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from slidemap.cli import _leaf_commands, _subparsers, build_parser, main


def test_every_command_and_option_says_what_it_does():
    parser = build_parser()
    missing = []
    for command in _subparsers(parser):
        if not command.description:
            missing.append(f"{command.prog}: no description")
        for action in command._actions:
            if not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{command.prog} {'/'.join(action.option_strings) or action.dest}: no help")
    assert not missing, "\n".join(missing)


def test_every_command_takes_the_same_quiet():
    commands = list(_leaf_commands(build_parser()))
    assert len(commands) >= 10
    for command in commands:
        quiet = [a for a in command._actions if "--quiet" in a.option_strings]
        assert quiet and set(quiet[0].option_strings) == {"-q", "--quiet", "--no-progress"}, command.prog


@pytest.mark.parametrize("argv, suggestion", [
    (["stauts", "x"], "did you mean 'status'?"),
    (["train", "lsm", "x", "--preset", "dmeo"], "did you mean 'demo'?"),
    (["prepare", "x", "--quite"], "did you mean '--quiet'?"),
    # an option of another command is named as such (it once read "--region; did you mean '--region'?")
    (["train", "unet", "--region", "x"], "--region is an option of 'slidemap detect' only"),
    (["--quiet", "status", "x"], "--quiet is an option of the commands: give it after the command's name"),
])
def test_misspellings_get_a_suggestion(argv, suggestion, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert suggestion in capsys.readouterr().err


def test_a_reader_that_leaves_early_is_not_an_error():
    """`slidemap status --json | head`: a long answer into a pipe closed after a few bytes."""
    code = (
        "import sys, slidemap.commands.region as r\n"
        "r._status = lambda args: [print('x' * 100) for _ in range(50000)]\n"
        "from slidemap.cli import main\n"
        "sys.exit(main(['status', '.']))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(10)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "BrokenPipe" not in err and "error" not in err, err


@pytest.mark.parametrize("setting, message", [
    ("epochs=abc", "--set epochs=abc: Input should be a valid integer"),
    ("loss=dice", "--set loss=dice: Input should be 'focal' or 'focal+dice'"),
    ("nope=1", "--set nope=...: no such setting; known: alpha, augment,"),
    ("threshold_plateau=0", "--set threshold_plateau=0: Input should be greater than 0"),
    ("epochs", "--set epochs: write KEY=VALUE"),
])
def test_train_unet_settings_are_validated(setting, message, capsys, tmp_path):
    """`train unet --set KEY=VALUE` (as `train lsm` has): typed by UnetConfig, one line on a mistake."""
    code = main(["train", "unet", "--chips", str(tmp_path), "--out", str(tmp_path / "m"), "--set", setting])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("slidemap: error: " + message) and "\n" not in err, err


def test_train_unet_settings_apply_over_the_preset():
    from slidemap.training.unet_train import apply_settings, preset

    cfg = apply_settings(preset("demo"), {"epochs": "40", "augment": "off", "splits": "blocked,random",
                                          "compare_epochs": "3,6", "epoch_chips": "none"})
    assert (cfg.epochs, cfg.augment, cfg.splits, cfg.compare_epochs, cfg.epoch_chips) == (
        40, False, ("blocked", "random"), (3, 6), None)
    assert cfg.base_width == preset("demo").base_width  # the rest stays the preset's
