"""How a command that fails ends: a user's mistake as one line (exit 2), a bug as one line naming a log file that
holds the traceback (exit 1)."""

from __future__ import annotations

import platform
import sys
import tempfile
import traceback
from datetime import UTC, datetime
from pathlib import Path

from warehouse import Workdir


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def log_files(workdir: Path | None, stamp: str) -> list[Path]:
    """Where a traceback may go, in order: the workdir's logs/ when the command ran on a workdir, then the temp
    folder (no workdir, or one that cannot be written)."""
    temp = Path(tempfile.gettempdir()) / f"groundex-error-{stamp}.log"
    if workdir is None or not Workdir(workdir).exists():
        return [temp]
    return [Workdir(workdir).logs_dir / f"error-{stamp}.log", temp]


def write_traceback(error: BaseException, command: str, argv: list[str], workdir: Path | None) -> Path | None:
    """Write the traceback of `error` with what ran to a new log file; its path, or None when no folder takes it."""
    now = datetime.now(UTC)
    text = (f"groundex {command} failed at {now.isoformat(timespec='seconds')}\n"
            f"command line: groundex {' '.join(argv)}\n"
            f"python {platform.python_version()} on {platform.platform()}\n\n"
            + "".join(traceback.format_exception(error)))
    for first in log_files(workdir, now.strftime("%Y%m%dT%H%M%SZ")):
        try:
            first.parent.mkdir(parents=True, exist_ok=True)
            for n in range(1, 100):  # two failures in the same second get two files
                path = first if n == 1 else first.with_stem(f"{first.stem}-{n}")
                try:
                    with path.open("x", encoding="utf-8") as f:
                        f.write(text)
                    return path
                except FileExistsError:
                    continue
        except OSError:
            continue
    return None


def report_bug(error: BaseException, command: str, argv: list[str], workdir: Path | None, debug: bool) -> None:
    """The message for an error that is not the user's mistake, on stderr (stdout may carry --json)."""
    if debug:
        traceback.print_exception(error, file=sys.stderr)
        where = "the traceback is above"
    else:
        path = write_traceback(error, command, argv, workdir)
        where = f"the traceback is in {path}" if path else "rerun with --debug to see the traceback"
    print(f"groundex {command}: internal error: {first_line(error)} (a bug; {where})", file=sys.stderr)
