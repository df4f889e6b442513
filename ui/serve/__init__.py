"""`groundex serve`: a workdir as an HTTP API (FastAPI), with clip-retrieval's clip back protocol.

    create_app     the ASGI app of a workdir (ui/serve/app.py)
    ServeOptions   its settings: model, token, limits, CORS
    Service        what it answers, without HTTP (ui/serve/service.py)
"""

from .app import ServeOptions, create_app
from .service import Service

__all__ = ["create_app", "ServeOptions", "Service"]
