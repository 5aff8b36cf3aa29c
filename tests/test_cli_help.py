"""The installed `persam` command: a version, and help that says what every option does and its default."""
import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from persam_lib.cli import build_parser

PERSAM = shutil.which("persam", path=str(Path(sys.executable).parent)) or "persam"


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_version_comes_from_the_installed_package():
    from importlib.metadata import version

    result = subprocess.run([PERSAM, "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.strip() == f"persam {version('persam-lib')}"


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_option_says_what_it_does(command):
    parser = _subcommands()[command]
    undocumented = [a.option_strings or a.dest for a in parser._actions if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert undocumented == [], f"persam {command}: options without help text: {undocumented}"


def test_help_shows_defaults_but_not_empty_ones():
    result = subprocess.run([PERSAM, "train", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    assert "maximum epochs per fold (early stopping on the validation split) (default: 100)" in text
    assert "seed of folds, initialisation and sampling (default: 0)" in text  # a zero default is still shown
    assert "(default: None)" not in text and "(default: [])" not in text
    extract = " ".join(subprocess.run([PERSAM, "extract", "--help"], capture_output=True, text=True).stdout.split())
    assert "(default: 256)" in extract and "(default: stats)" in extract
