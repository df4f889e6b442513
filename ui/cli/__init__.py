"""The `groundex` command line: one module per command, each with `add_parser` and `run`."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from warehouse import InputError

from . import (
    caption,
    chunk,
    demo,
    evaluate,
    export,
    ground,
    index,
    info,
    ingest,
    model,
    remove,
    search,
    serve,
    tag,
    train,
    ui,
    verify,
)
from ._common import known_user_errors
from ._errors import report_bug

COMMANDS = (demo, ingest, info, remove, model, train, index, search, ground, tag, caption, chunk, evaluate, export,
            serve, ui, verify)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="groundex",
        description="Embedding index and retrieval-grounding for image collections. "
                    "Start with `groundex demo`, then `groundex info`.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv for debug, and errors end with Python's traceback)")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error on stderr (a bug's is otherwise written to a log "
                             "file in the workdir, named in the message)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit 0 on success, 2 for a user's mistake (one line on stderr), 1 for a bug (one line naming
    the log file with the traceback; --debug prints it), 130 when interrupted."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args) or 0)
    except known_user_errors() as e:  # a user's mistake gets a message, not a traceback
        if args.verbose >= 2:
            raise
        if args.debug:
            traceback.print_exception(e, file=sys.stderr)
        message = str(e) if isinstance(e, InputError) else f"{type(e).__name__}: {e}"
        print(f"groundex {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"groundex {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:  # anything else is a bug: a short message, the traceback in a log file
        if args.verbose >= 2:
            raise
        report_bug(e, args.command, argv, getattr(args, "workdir", None), debug=args.debug)
        return 1


if __name__ == "__main__":
    sys.exit(main())
