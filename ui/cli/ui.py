"""`groundex ui`: start the Streamlit app on a workdir."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from warehouse import InputError

from ._common import add_workdir

APP = Path(__file__).resolve().parents[1] / "app" / "main.py"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ui", help="start the Streamlit app (browse, search, ground, tag, caption, explore, evaluate, SQL)",
        description="Starts `streamlit run` on the app with the workdir. Headless when there is no display "
                    "(it prints the URL to open). Arguments after `--` go to streamlit unchanged, e.g. "
                    "`groundex ui --workdir W -- --server.address 0.0.0.0`.")
    add_workdir(p)
    p.add_argument("--port", type=int, default=8501, help="port to serve on (default: %(default)s)")
    p.add_argument("--headless", action="store_true", help="never open a browser (default: when $DISPLAY is unset)")
    p.add_argument("streamlit_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(run=run)


def command(args: argparse.Namespace) -> list[str]:
    headless = args.headless or not (os.environ.get("DISPLAY") or sys.platform == "darwin")
    extra = [a for a in args.streamlit_args if a != "--"]
    return [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(args.port),
            "--server.headless", str(headless).lower(), "--browser.gatherUsageStats", "false",
            "--client.toolbarMode", "viewer", *extra]


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise InputError(f"--port must be between 1 and 65535, got {args.port}")
    env = {**os.environ, "GROUNDEX_WORKDIR": str(Path(args.workdir).resolve())}
    print(f"groundex ui: serving {args.workdir} on http://localhost:{args.port} (Ctrl-C stops)", file=sys.stderr,
          flush=True)
    # Streamlit takes this process's place rather than running as its child: a signal that stops `groundex ui`
    # (a service manager's SIGTERM, a test ending) then stops the server too, and no orphan keeps the port.
    argv = command(args)
    os.execve(argv[0], argv, env)
    return 0  # not reached
