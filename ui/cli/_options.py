"""One vocabulary: an option that several commands take has one name, one meaning and one help text (README,
"CLI conventions"). A renamed option keeps its old spelling, hidden, to say what replaced it."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import UserError


def add_k(parser: argparse.ArgumentParser, what: str, default: int = 10) -> None:
    """-k: how many results a query returns, and nothing else."""
    parser.add_argument("-k", type=int, default=default, help=f"number of {what} (default: %(default)s)")


def add_model(parser: argparse.ArgumentParser, what: str = "model") -> None:
    """--model: a model recorded in the workdir (`groundex train --base` names a starting point instead)."""
    parser.add_argument("--model", default=None,
                        help=f"{what} label or hash prefix (default: the newest; `groundex model list`)")


def add_captioner(parser: argparse.ArgumentParser) -> None:
    """--captioner: a recorded captioner, as --model is a recorded CLIP model."""
    parser.add_argument("--captioner", default=None, help="captioner label or hash prefix (default: the newest)")


def add_memory(parser: argparse.ArgumentParser) -> None:
    """--memory: the human captions the captioner's retrieval draws from (`heads.captioning.CaptionData`)."""
    parser.add_argument("--memory", default="train", metavar="train|SPLIT,...|all",
                        help="the human captions retrieval draws from: the train split's, those of the splits named "
                             "(e.g. train,val), or all; captions ingested and indexed after the captioner was "
                             "trained count, no retraining needed (a running app or server: once restarted); an "
                             "image's own captions never do (default: %(default)s)")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")


def add_precision(parser: argparse.ArgumentParser, default: str) -> None:
    """--precision: fp32, bf16 autocast, or auto (bf16 where the CPU or GPU runs it fast); one test decides it for
    every command (`indexer.devices.precision_uses_bf16`)."""
    from indexer.config import PRECISIONS

    parser.add_argument("--precision", choices=PRECISIONS, default=default,
                        help="auto: bf16 autocast where the CPU (AVX512-BF16, AMX) or GPU runs it fast; bf16: always; "
                             "fp32: never (default: %(default)s)")


def add_json(parser: argparse.ArgumentParser, what: str = "the result") -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout")


def add_no_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (they go to stderr)")


class _Renamed(argparse.Action):
    """An option's former spelling, hidden from --help: the command stops with a one-line hint (exit 2)."""

    def __init__(self, option_strings: list[str], dest: str, hint: str, **kwargs: Any) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, nargs="?", default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)
        self.hint = hint

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        message = f"{option_string} is now {self.hint}"

        def refuse(args: argparse.Namespace) -> int:
            raise UserError(message)

        namespace.run = refuse  # replaces the command: nothing runs, and main() reports the hint


def add_renamed(parser: argparse.ArgumentParser, old: str, hint: str) -> None:
    """`old` was renamed: using it fails with "OLD is now HINT", e.g. hint "--base (what to start from)"."""
    parser.add_argument(old, action=_Renamed, hint=hint)
