"""Options and helpers shared by the commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from warehouse import DEFAULT_WORKDIR, CatalogError, FormatError, ImageError, Workdir


class UserError(Exception):
    """A problem with the user's input, reported as one line."""


def known_user_errors() -> tuple[type[BaseException], ...]:
    from indexer.embed import MissingEmbeddingError

    return (UserError, FileNotFoundError, NotADirectoryError, FormatError, ImageError, CatalogError, ValueError,
            MissingEmbeddingError)


def add_workdir(parser: argparse.ArgumentParser) -> None:
    default = Path(os.environ.get("GROUNDEX_WORKDIR", DEFAULT_WORKDIR))
    parser.add_argument("--workdir", type=Path, default=default, metavar="DIR",
                        help=f"the workdir to build or read (default: $GROUNDEX_WORKDIR or ./{DEFAULT_WORKDIR})")


def workdir_of(args: argparse.Namespace) -> Workdir:
    return Workdir(args.workdir)


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
