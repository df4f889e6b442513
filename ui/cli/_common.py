"""Options and helpers shared by the commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from warehouse import DEFAULT_WORKDIR, CatalogError, FormatError, ImageError, InputError, Workdir


class UserError(InputError):
    """A problem with a command's arguments found by the CLI itself, reported as one line."""


def known_user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean a user's mistake (exit 2, one line); any other is a bug (exit 1, traceback logged).
    FileNotFoundError and friends: our code raises them for paths the user named."""
    from indexer.config import MissingEmbeddingError

    return (InputError, FormatError, ImageError, CatalogError, MissingEmbeddingError, FileNotFoundError,
            NotADirectoryError, FileExistsError)


def add_workdir(parser: argparse.ArgumentParser) -> None:
    default = Path(os.environ.get("GROUNDEX_WORKDIR", DEFAULT_WORKDIR))
    parser.add_argument("--workdir", type=Path, default=default, metavar="DIR",
                        help=f"the workdir to build or read (default: $GROUNDEX_WORKDIR or ./{DEFAULT_WORKDIR})")


def add_resume(parser: argparse.ArgumentParser, what: str) -> None:
    """--resume / --restart (dest `resume`: True / False; None by default: an interrupted run with the same
    settings continues by itself)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", dest="resume", action="store_true", default=None,
                       help=f"continue {what}, whatever its settings (default: an interrupted run with the same "
                            "settings continues by itself)")
    group.add_argument("--restart", dest="resume", action="store_false",
                       help="start over even if an interrupted run with the same settings exists")


def workdir_of(args: argparse.Namespace) -> Workdir:
    return Workdir(args.workdir)


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def phrase_line(phrase: dict[str, Any]) -> str:
    """'[type] words: box x1, y1, x2, y2' (or 'no box') for a grounded phrase as `GeneratedPhrase.as_dict` gives it."""
    box = phrase.get("box")
    where = "no box" if box is None else "box " + ", ".join(f"{v:.0f}" for v in box)
    return f"[{'/'.join(phrase['types'])}] {phrase['text']}: {where}"
