"""`groundex serve`: the workdir as an HTTP API for programs (and for clip-retrieval's clients)."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

from ._common import UserError, add_workdir, workdir_of
from ._options import add_device, add_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve search and metadata over HTTP (JSON; clip-retrieval's clip back protocol too)",
        description="Runs one warm process (FastAPI on uvicorn) that loads the model and indexes once and answers "
                    "JSON: GET /health, /models, /images/{id}, /images/{id}/thumbnail; POST /search, /ground, /tags, "
                    "/caption; and clip back's "
                    "GET /indices-list, POST /knn-service, POST /metadata, so clip-retrieval's ClipClient works "
                    "unchanged. OpenAPI docs at /docs. Binds to 127.0.0.1; any other address needs --token-file. "
                    "docs/serve.md lists every endpoint.")
    add_workdir(p)
    add_model(p)
    add_device(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--token-file", type=Path, default=None,
                   help="a file holding the token every request but /health must send as 'Authorization: Bearer "
                        "TOKEN' (required to bind to any address other than loopback)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser pages from this origin (repeatable; default: CORS off)")
    p.add_argument("--allow-url-fetch", action="store_true",
                   help="let /knn-service fetch the image at a request's image_url (off by default: the server then "
                        "makes requests to any address a client names)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a request may take (default: %(default)s)")
    p.set_defaults(run=run)


def _token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        token = path.expanduser().read_text().strip()
    except OSError as e:
        raise UserError(f"--token-file {path}: {e.strerror or e}") from None
    if len(token) < 16:
        raise UserError(f"--token-file {path}: the token must be at least 16 characters")
    return token


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {args.port}")
    if args.timeout <= 0:
        raise UserError(f"--timeout must be > 0, got {args.timeout}")
    token = _token(args.token_file)
    if token is None and not _loopback(args.host):
        raise UserError(f"--host {args.host} is reachable from other machines: give --token-file (or serve on "
                        "127.0.0.1)")
    import uvicorn

    from ui.serve import ServeOptions, create_app

    app = create_app(workdir_of(args), ServeOptions(model=args.model, token=token, device=args.device,
                                                    cors_origins=tuple(args.cors_origin), timeout_s=args.timeout,
                                                    allow_url_fetch=args.allow_url_fetch))
    print(f"groundex serve: {args.workdir} on http://{args.host}:{args.port} (docs at /docs; Ctrl-C stops)",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
