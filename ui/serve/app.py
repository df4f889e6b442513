"""The HTTP API of `groundex serve` (FastAPI): groundex's own endpoints and clip-retrieval's `clip back` protocol.

Safe by default: the server binds to 127.0.0.1 (`ui.cli.serve` refuses another address without a token); with a
token every request but `/health` needs `Authorization: Bearer <token>`, compared in constant time. Request bodies
are limited in size, uploads in pixels, `k` and `num_images` in count, and every request in time. Errors are JSON
`{"error": message, "request_id": id}`: 4xx for the client's mistakes, 500 for bugs, whose traceback goes to the
server's log under the same request id and never into the response.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexer.search import Hit
from warehouse import DEFAULT_MAX_PIXELS, CatalogError, ImageError, InputError, Workdir

from .service import Filters, ServerFault, Service, decode_image

__all__ = ["create_app", "ServeOptions"]

_logger = logging.getLogger("groundex.serve")


@dataclass
class ServeOptions:
    model: str | None = None                 # a recorded model (label or hash prefix); default: the newest
    token: str | None = None                 # required as a Bearer token on every request but /health when set
    device: str | None = None
    max_body_bytes: int = 16 * 2**20         # request bodies above this get 413
    max_pixels: int = DEFAULT_MAX_PIXELS     # uploads with more pixels get 400 (the app's upload limit)
    max_k: int = 1000                        # k, num_images and num_result_ids above this get 400
    timeout_s: float = 30.0                  # a request still running after this gets 504
    cors_origins: tuple[str, ...] = ()       # CORS off unless origins are given
    allow_url_fetch: bool = False            # /knn-service's image_url: fetched only when the operator allows it
    warm: bool = True                        # load the text encoder and the image index at start-up
    extra: dict[str, Any] = field(default_factory=dict)


ImageId = Annotated[int, PathParam(ge=0, le=2**63 - 1, description="a catalog image id")]


class ClientError(Exception):
    """A request the server cannot answer because of what the client sent: `status` and a message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# -- request and response models (they make the OpenAPI docs at /docs) -----------------------------------------------

class SearchRequest(BaseModel):
    text: str | None = Field(None, description="a text query")
    image: str | None = Field(None, description="an image, base64 (a data: URL works too)")
    image_id: int | None = Field(None, description="a catalog image: its stored embedding (left out of its results)")
    embedding: list[float] | None = Field(None, description="a raw embedding in the model's space")
    k: int = Field(10, ge=1, description="how many hits")
    modality: str = Field("image", description="image: the nearest images; text: the nearest captions")
    split: str | None = Field(None, description="only images of this split")
    tags: list[str] = Field(default_factory=list, description="only images with every one of these tags")
    where: str | None = Field(None, description="an SQL condition over the images' columns, as `--where`")


class GroundRequest(BaseModel):
    phrase: str = Field(description="what to find, e.g. 'the man in the red jacket'")
    image: str | None = Field(None, description="ground in this image, base64")
    image_id: int | None = Field(None, description="ground in this catalog image")
    k: int = Field(10, ge=1, description="without an image: how many regions across the collection")
    split: str | None = None
    tags: list[str] = Field(default_factory=list)
    where: str | None = None


class SearchHit(BaseModel):
    id: int = Field(description="the image id, or the caption id when modality is text")
    score: float
    image_id: int
    split: str | None
    captions: list[str]
    text: str | None = Field(None, description="the caption, when modality is text")
    url: str = Field(description="this server's URL of the image's thumbnail")


class SearchResponse(BaseModel):
    model_id: str
    hits: list[SearchHit]


class KnnRequest(BaseModel):
    """clip-retrieval's `/knn-service` request (clip back's fields)."""

    text: str | None = None
    image: str | None = None
    image_url: str | None = None
    embedding_input: list[float] | None = None
    modality: str = "image"
    num_images: int = 100
    num_result_ids: int | None = None
    indice_name: str | None = None
    deduplicate: bool = False
    # accepted for compatibility and not applied (groundex has no safety, violence or aesthetic models)
    use_mclip: bool = False
    use_safety_model: bool = False
    use_violence_detector: bool = False
    aesthetic_score: Any = None
    aesthetic_weight: Any = None


class BodyTooLarge(Exception):
    pass


class _BodyLimit:
    """ASGI middleware: a request body (chunked or not, JSON or multipart) stops being read past `limit` bytes."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(f"request body over {self.limit:,} bytes")
            return message

        await self.app(scope, limited, send)


def create_app(workdir: Workdir, options: ServeOptions | None = None) -> FastAPI:
    options = options or ServeOptions()
    service = Service(workdir, options.model, options.device, options.max_pixels)
    if options.warm:
        service.warm_up()
    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        service.close()  # lets go of the catalog

    app = FastAPI(title="groundex", description="Search, grounding and metadata of a groundex workdir; "
                  "clip-retrieval's clip back protocol at /indices-list, /knn-service and /metadata.",
                  lifespan=lifespan)
    app.state.service = service

    @app.middleware("http")
    async def guard(request: Request, call_next):  # request id, token, body size, time limit, errors
        request_id = uuid.uuid4().hex[:12]
        request.state.request_id = request_id
        started = time.perf_counter()
        try:
            preflight = request.method == "OPTIONS" and "access-control-request-method" in request.headers
            if options.token is not None and request.url.path != "/health" and not preflight:
                given = request.headers.get("authorization", "")
                expected = f"Bearer {options.token}"
                if not hmac.compare_digest(given.encode(), expected.encode()):
                    raise ClientError(401, "missing or wrong token (Authorization: Bearer TOKEN)")
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > options.max_body_bytes):
                raise ClientError(413, f"request body over {options.max_body_bytes:,} bytes")
            with anyio.fail_after(options.timeout_s):
                response = await call_next(request)
        except ClientError as e:
            response = _error(e.status, str(e), request_id)
        except TimeoutError:
            response = _error(504, f"the request took longer than {options.timeout_s:g} s", request_id)
        except BodyTooLarge as e:
            response = _error(413, str(e), request_id)
        except Exception as e:  # a bug or a server fault: the log gets the traceback, the client the request id
            too_large = _find(e, BodyTooLarge)  # raised while the middleware's task read the body: in a group
            if too_large is not None:
                response = _error(413, str(too_large), request_id)
            else:
                _logger.error("request %s failed", request_id, exc_info=e)
                response = _error(500, "internal error (the server's log has its details under this request id)",
                                  request_id)
        response.headers["X-Request-Id"] = request_id
        _logger.info("%s %s %s %d %.1f ms", request_id, request.method, request.url.path, response.status_code,
                     1000 * (time.perf_counter() - started))
        return response

    # CORS outside the guard, so a browser's preflight gets its answer (and never needs the token)
    if options.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(options.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(_BodyLimit, limit=options.max_body_bytes)

    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError) -> JSONResponse:
        return _error(exc.status, str(exc), request.state.request_id)

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return _error(413, str(exc), request.state.request_id)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:  # unknown routes, 405s
        return _error(exc.status_code, str(exc.detail), getattr(request.state, "request_id", "-"))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:  # e.g. /images/abc
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return _error(400, f"{where}: {first['msg']}", request.state.request_id)

    async def body(request: Request) -> dict[str, Any]:
        """The JSON body, whatever the Content-Type says (clip-retrieval's client sends none), within the limit."""
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > options.max_body_bytes:
                raise ClientError(413, f"request body over {options.max_body_bytes:,} bytes")
        try:
            data = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ClientError(400, f"the body is not JSON: {e}") from None
        if not isinstance(data, dict):
            raise ClientError(400, "the body must be a JSON object")
        return data

    def parse(model: type[BaseModel], data: dict[str, Any]) -> Any:
        try:
            return model.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise ClientError(400, f"{where}: {first['msg']}") from None

    def check_k(name: str, k: int) -> None:
        if not 1 <= k <= options.max_k:
            raise ClientError(400, f"{name} must be between 1 and {options.max_k}, got {k}")

    async def run(fn, *args):
        """A blocking call (model, index, catalog) on a worker thread; user mistakes become 400s."""
        try:
            return await anyio.to_thread.run_sync(fn, *args)
        except ServerFault as e:
            raise RuntimeError(str(e)) from None  # a 500; the message goes to the log only
        except CatalogError as e:  # busy (a writer holding it past the lock timeout) or unreadable: the log has it
            _logger.error("catalog: %s", e)
            raise ClientError(503, "the catalog is busy or unreadable; try again (the server's log has the "
                                   "details)") from None
        except (InputError, ImageError) as e:
            raise ClientError(400, str(e)) from None
        except TimeoutError as e:  # the request's catalog filter ran past its limit (the service's own clock)
            raise ClientError(400, str(e)) from None
        except KeyError as e:
            raise ClientError(404, f"not found: {e.args[0] if e.args else ''}") from None

    def hit_out(request: Request, hit: Hit) -> dict[str, Any]:
        return {"id": hit.id, "score": hit.score, "image_id": hit.image_id, "split": hit.split,
                "captions": hit.captions, "text": hit.text,
                "url": str(request.url_for("thumbnail", image_id=hit.image_id))}

    # -- groundex's endpoints ---------------------------------------------------------------------------------------

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model_id": service.model_id, "indexes": service.searcher.loaded_indexes()}

    @app.get("/models")
    async def models() -> list[dict[str, Any]]:
        return await run(service.models)

    @app.post("/search", response_model=SearchResponse, openapi_extra={"requestBody": {"content": {
        "application/json": {"schema": SearchRequest.model_json_schema()}}, "required": True}})
    async def search(request: Request) -> dict[str, Any]:
        """Text, image (base64 in JSON, or a multipart upload in the field `image`), catalog image or embedding ->
        the k nearest images (or captions, modality text), with catalog filters."""
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=16)
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise ClientError(400, "multipart: send the image as a file in the field 'image'")
            data = {k: v for k, v in form.items() if k != "image"}
            if "tags" in data:
                data["tags"] = [t for t in str(data["tags"]).split(",") if t]
            query = parse(SearchRequest, data)
            image = await run(decode_image, await upload.read(), options.max_pixels)
        else:
            query = parse(SearchRequest, await body(request))
            image = await run(decode_image, query.image, options.max_pixels) if query.image is not None else None
        check_k("k", query.k)
        vector, exclude = await run(service.query_vector, query.text, image, query.image_id, query.embedding)
        filters = Filters(query.split, tuple(query.tags), query.where)
        hits = await run(service.search, vector, query.k, query.modality, filters, exclude)
        return {"model_id": service.model_id, "hits": [hit_out(request, h) for h in hits]}

    @app.post("/ground", openapi_extra={"requestBody": {"content": {
        "application/json": {"schema": GroundRequest.model_json_schema()}}, "required": True}})
    async def ground(request: Request) -> dict[str, Any]:
        """A phrase in one image (`image` or `image_id`): its point, boxes (pixels of the image) and the patch heatmap
        of cosine similarities; without an image, the k best regions across the collection (with the filters)."""
        query = parse(GroundRequest, await body(request))
        check_k("k", query.k)
        image = await run(decode_image, query.image, options.max_pixels) if query.image is not None else None
        grounded = await run(service.ground, query.phrase, image, query.image_id, query.k,
                             Filters(query.split, tuple(query.tags), query.where))
        for g in grounded:
            if g["image_id"] is not None:
                g["url"] = str(request.url_for("thumbnail", image_id=g["image_id"]))
        return {"model_id": service.model_id, "results": grounded}

    @app.post("/tags")
    async def tags(request: Request) -> dict[str, Any]:
        """Tags of an upload (`image`, base64) or a catalog image (`image_id`) from every fitted tagger."""
        image, image_id, _ = await image_input(request)
        return {"model_id": service.model_id, "tags": await run(service.tags, image, image_id)}

    @app.post("/caption")
    async def caption(request: Request) -> dict[str, Any]:
        """A caption of an upload (`image`, base64) or a catalog image (`image_id`) by the newest captioner, with
        the retrieved captions it read from the caption memory `memory` ("train", the default; "SPLIT,SPLIT";
        "all")."""
        image, image_id, data = await image_input(request)
        memory = data.get("memory", "train")
        if not isinstance(memory, str) or len(memory) > 200:
            raise ClientError(400, "memory must be a string: train, SPLIT,SPLIT or all")
        return await run(service.caption, image, image_id, memory)

    async def image_input(request: Request) -> tuple[Any, int | None, dict[str, Any]]:
        data = await body(request)
        image_id = data.get("image_id")
        if image_id is not None and (not isinstance(image_id, int) or isinstance(image_id, bool)):
            raise ClientError(400, "image_id must be an integer")
        image = await run(decode_image, data["image"], options.max_pixels) if data.get("image") is not None else None
        return image, image_id, data

    @app.get("/images/{image_id}")
    async def image(image_id: ImageId) -> dict[str, Any]:
        """An image's metadata, captions (human and generated), phrases with boxes (fractions of the image) and
        tags."""
        return await run(service.image, image_id)

    @app.get("/images/{image_id}/thumbnail", name="thumbnail")
    async def thumbnail(image_id: ImageId) -> Response:
        return Response(await run(service.thumbnail, image_id), media_type="image/jpeg")

    # -- clip-retrieval's clip back -------------------------------------------------------------------------------

    @app.get("/indices-list")
    async def indices_list() -> list[str]:
        """The served model's name (its label, or its id): clip back's index names."""
        return [m["label"] or m["id"] for m in await run(service.models) if m["serving"]]

    @app.post("/knn-service")
    async def knn_service(request: Request) -> list[dict[str, Any]]:
        """clip back's query: the nearest images (modality image) or captions (modality text) as
        [{id, similarity, url, caption}]; `url` is this server's thumbnail URL of the image."""
        query = parse(KnnRequest, await body(request))
        if query.indice_name not in (None, *await run(_served_names, service)):
            raise ClientError(404, f"indice_name {query.indice_name!r} is not served here (GET /indices-list)")
        if query.image_url is not None and not options.allow_url_fetch:
            raise ClientError(400, "image_url is not fetched by this server (its operator has not allowed it with "
                                   "--allow-url-fetch): send the image as base64 in 'image'")
        if query.image_url is not None:
            if query.image is not None:
                raise ClientError(400, "give image or image_url, not both")
            query.image = await run(_fetch, query.image_url, options.max_body_bytes)
        wanted = query.num_result_ids or query.num_images
        check_k("num_images", query.num_images)
        check_k("num_result_ids", wanted)
        image = await run(decode_image, query.image, options.max_pixels) if query.image is not None else None
        vector, _ = await run(service.query_vector, query.text, image, None, query.embedding_input)
        hits = await run(service.search, vector, max(wanted, query.num_images), query.modality)
        if query.deduplicate:
            hits = await run(_deduplicate, service, hits, query.modality)
        return [{"id": h.id, "similarity": h.score, "url": str(request.url_for("thumbnail", image_id=h.image_id)),
                 "caption": h.text if h.text is not None else (h.captions[0] if h.captions else "")}
                for h in hits[:query.num_images]]

    @app.post("/metadata")
    async def metadata(request: Request) -> list[dict[str, Any]]:
        """clip back's metadata: [{id, metadata: {url, caption}}] for image ids."""
        data = await body(request)
        ids = data.get("ids", [])
        if not isinstance(ids, list) or not all(isinstance(i, int) and 0 <= i < 2**63 for i in ids):
            raise ClientError(400, "ids must be a list of image ids (non-negative integers)")
        check_k("len(ids)", max(1, len(ids)))
        found = await run(service.images, ids)
        return [{"id": image_id, "metadata": {
                    "url": str(request.url_for("thumbnail", image_id=image_id)),
                    "caption": found[image_id]["captions"][0] if found[image_id]["captions"] else ""}}
                for image_id in ids if image_id in found]

    return app


def _fetch(url: str, limit: int) -> bytes:
    """An image by URL (http or https only), at most `limit` bytes, within 10 s."""
    import urllib.error
    import urllib.request

    class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            if not newurl.lower().startswith(("http://", "https://")):
                raise InputError("image_url redirects to a URL that is not http or https")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    if not url.lower().startswith(("http://", "https://")):
        raise InputError("image_url must be an http or https URL")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _HttpOnlyRedirects())  # no proxies
    deadline, data = time.monotonic() + 10, b""
    try:
        with opener.open(urllib.request.Request(url, headers={"User-Agent": "groundex"}), timeout=10) as r:
            while len(data) <= limit and time.monotonic() < deadline:
                chunk = r.read(65536)
                if not chunk:
                    break
                data += chunk
            else:
                if len(data) <= limit:
                    raise InputError("image_url: the download took longer than 10 s")
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise InputError(f"image_url could not be fetched: {getattr(e, 'reason', e)}") from None
    if len(data) > limit:
        raise InputError(f"image_url: the image is over {limit:,} bytes")
    return base64.b64encode(data).decode()


def _served_names(service: Service) -> list[str]:
    """The names clients may give as `indice_name`: the served model's id and label (one model per server)."""
    [served] = [m for m in service.models() if m["serving"]]
    return [served["id"], *([served["label"]] if served["label"] else [])]


def _deduplicate(service: Service, hits: list[Hit], modality: str) -> list[Hit]:
    """Drop hits whose image is a near-duplicate (cosine >= 0.99) of a better hit's image (clip back's
    `deduplicate`); captions: the same text once."""
    if modality == "text":
        seen: set[str] = set()
        return [h for h in hits if not (h.text in seen or seen.add(h.text))]
    from indexer.shards import load_embeddings

    ids, vectors = load_embeddings(service.workdir, service.model_id, "image", [h.image_id for h in hits])
    row = {int(i): r for r, i in enumerate(ids)}
    kept: list[Hit] = []
    kept_vectors: list[Any] = []
    for h in hits:
        v = vectors[row[h.image_id]]
        v = v / max(float((v * v).sum()) ** 0.5, 1e-12)
        if all(float(v @ u) < 0.99 for u in kept_vectors):
            kept.append(h)
            kept_vectors.append(v)
    return kept


def _find(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    """`error` itself or the first `kind` inside an exception group, else None."""
    if isinstance(error, kind):
        return error
    for inner in getattr(error, "exceptions", ()):
        found = _find(inner, kind)
        if found is not None:
            return found
    return None


def _error(status: int, message: str, request_id: str) -> JSONResponse:
    return JSONResponse({"error": message, "request_id": request_id}, status_code=status)
