"""The HTTP API (FastAPI): search an index with photos or stored items, read items, and add or remove them.

Every response is JSON (an item's image file excepted) and carries the score of every hit and the index's
fingerprint. Bad input gets a status and a JSON ``{"error": ...}``, never a 500: an oversize body 413, a file that
is not an image 415, a truncated or corrupt one or a decompression bomb 400, a bad parameter 422, an unknown id
404, a missing token 401, a wrong one 403, a path outside ``--allow-root`` 403. The OpenAPI schema is served at
``/docs`` (and ``/openapi.json``). See docs/api.md.
"""

import hmac
import json
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, Header, Query, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.service import MAX_K, Forbidden, NotFound
from api.service import Query as SearchQuery
from engine.errors import PPSSLError
from engine.imageio import ImageLoadError
from indexer.controls import ResultControls
from indexer.refine import Refine, reranker_names

DEFAULT_REFINE = "qe"  # as `ppssl search` (indexer/cli.py SEARCH_REFINE)


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _image_error(exc: ImageLoadError) -> ApiError:
    reason = exc.reason
    if "not a recognised image" in reason:
        return ApiError(415, f"not an image this service can read ({reason}); send JPEG, PNG, WebP, BMP or GIF")
    return ApiError(400, f"the image cannot be used: {reason}")


class BodyLimit:
    """ASGI middleware: a request body larger than ``max_bytes`` gets 413 before it is read into memory."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        too_big = JSONResponse({"error": f"request body larger than {self.max_bytes} bytes"}, status_code=413)
        try:
            if length is not None and int(length) > self.max_bytes:
                return await too_big(scope, receive, send)
        except ValueError:
            return await JSONResponse({"error": "bad Content-Length"}, status_code=400)(scope, receive, send)
        seen = 0
        started = False

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooBig()
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracking_send)
        except _TooBig:
            if not started:
                await too_big(scope, receive, send)


class _TooBig(Exception):
    pass


def create_app(service, *, token: str | None = None, max_upload_mb: int = 20,
               max_pixels: int = 40_000_000) -> FastAPI:
    """The API over a :class:`api.service.SearchService`; ``token`` enables the write endpoints."""
    app = FastAPI(title="PP-SSL image search API", version="1",
                  description="Search a fine-grained image index with photos or stored items (docs/api.md).")
    app.add_middleware(BodyLimit, max_bytes=max_upload_mb * 2**20 + 64 * 1024)  # multipart overhead
    app.state.service = service

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        errors = [{"where": ".".join(str(p) for p in e.get("loc", ())), "problem": e.get("msg")} for e in exc.errors()]
        return JSONResponse({"error": "invalid request", "details": json.loads(json.dumps(errors, default=str))},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(NotFound)
    async def _not_found(request, exc):
        return JSONResponse({"error": str(exc)}, status_code=404)

    @app.exception_handler(Forbidden)
    async def _forbidden(request, exc):
        return JSONResponse({"error": str(exc)}, status_code=403)

    @app.exception_handler(ImageLoadError)
    async def _bad_image(request, exc):
        err = _image_error(exc)
        return JSONResponse({"error": err.message}, status_code=err.status)

    @app.exception_handler(PPSSLError)
    async def _ppssl(request, exc):
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc):  # a bug: still JSON, and the worker keeps serving
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)

    def authorized(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            raise ApiError(403, "writes are disabled: the API was started without --token-file")
        if not authorization:
            raise ApiError(401, "this endpoint needs 'Authorization: Bearer <token>'")
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise ApiError(403, "wrong token")

    def controls(k, refine, refine_k, min_score, collapse, collapse_cosine, offset, limit):
        if refine not in reranker_names():
            raise ApiError(422, f"refine must be one of {', '.join(reranker_names())}")
        try:
            r = Refine(method=refine, k=refine_k)
        except PPSSLError as exc:
            raise ApiError(422, str(exc)) from None
        return r, ResultControls(min_score=min_score, collapse=collapse, collapse_cosine=collapse_cosine)

    async def read_upload(upload: UploadFile) -> bytes:
        data = await upload.read(max_upload_mb * 2**20 + 1)
        if len(data) > max_upload_mb * 2**20:
            raise ApiError(413, f"the image is larger than {max_upload_mb} MiB")
        if not data:
            raise ApiError(400, "the image is empty (0 bytes)")
        return data

    def prepared(data: bytes):
        try:
            return service.preprocess(data, max_pixels)
        except ImageLoadError as exc:
            raise _image_error(exc) from None

    def respond(result: dict, k: int, offset: int, limit: int | None, extra: dict | None = None) -> dict:
        hits = [{"rank": r + 1, **h.to_dict()} for r, h in enumerate(result["hits"])]
        body = {"index": result["index"], "k": k, "total": len(hits), "dropped": result["dropped"],
                "excluded": result.get("excluded", []), **(extra or {})}
        stop = len(hits) if limit is None else offset + limit
        body["results"] = hits[offset:stop]
        body["offset"] = offset
        if stop < len(hits) or offset > 0:
            body["page_token"] = service.keep_page({"hits": hits, "index": result["index"]})
        return body

    K = Annotated[int, Query(ge=1, le=MAX_K, description=f"results wanted (1-{MAX_K})")]
    OFFSET = Annotated[int, Query(ge=0, le=MAX_K, description="first result returned (paging)")]
    LIMIT = Annotated[int | None, Query(ge=1, le=MAX_K, description="results returned from offset (paging)")]
    REFINE = Annotated[str, Query(description=f"re-ranking: {', '.join(reranker_names())} (default {DEFAULT_REFINE}, as "
                                              "`ppssl search`)")]
    RK = Annotated[int | None, Query(ge=1, le=50, description="neighbours used by qe / dba (default: the "
                                                                "method's: qe 1, dba 5, dba+qe 2)")]
    MIN = Annotated[float | None, Query(ge=-1.0, le=1.0, description="drop hits scoring below this cosine")]
    COLLAPSE = Annotated[bool, Query(description="drop near-duplicates of a higher-ranked hit (same file or cosine "
                                                 "above collapse_cosine)")]
    CC = Annotated[float | None, Query(gt=0.0, le=1.0, description="near-duplicate cosine (default: chosen on cub100 "
                                                                   "validation for the index's kind of space, "
                                                                   "benchmarks/results/collapse.md)")]

    @app.get("/healthz", summary="liveness")
    def healthz() -> dict:
        return {"ok": True, "index": service.describe()}

    @app.get("/v1/index", summary="what is served: type, size, encoder fingerprint, adaptation, metrics")
    def index_info() -> dict:
        return service.info()

    @app.post("/v1/search", summary="search with an uploaded photo")
    async def search(image: Annotated[UploadFile, File(description="the query photo")], k: K = 10,
                     refine: REFINE = DEFAULT_REFINE, refine_k: RK = None, min_score: MIN = None,
                     collapse: COLLAPSE = False, collapse_cosine: CC = None, offset: OFFSET = 0,
                     limit: LIMIT = None) -> dict:
        r, c = controls(k, refine, refine_k, min_score, collapse, collapse_cosine, offset, limit)
        data = await read_upload(image)
        from starlette.concurrency import run_in_threadpool

        def run():
            with service.batcher.coming():  # the batcher waits for this request while it decodes
                x, sha = prepared(data)
                return sha, service.search(SearchQuery(x=x, k=k, refine=r, controls=c, sha256=sha))

        sha, result = await run_in_threadpool(run)
        return respond(result, k, offset, limit, {"query": {"name": image.filename, "sha256": sha}})

    @app.post("/v1/search/batch", summary="search with several uploaded photos (one result list each)")
    async def search_batch(images: Annotated[list[UploadFile], File(description="query photos")], k: K = 10,
                           refine: REFINE = DEFAULT_REFINE, refine_k: RK = None, min_score: MIN = None,
                           collapse: COLLAPSE = False, collapse_cosine: CC = None) -> dict:
        import asyncio

        from starlette.concurrency import run_in_threadpool

        r, c = controls(k, refine, refine_k, min_score, collapse, collapse_cosine, 0, None)
        if len(images) > 64:
            raise ApiError(413, "at most 64 photos per batch request")
        datas = [await read_upload(im) for im in images]

        def run(data):
            with service.batcher.coming():
                x, sha = prepared(data)
                return sha, service.search(SearchQuery(x=x, k=k, refine=r, controls=c, sha256=sha))

        results = await asyncio.gather(*[run_in_threadpool(run, d) for d in datas])
        return {"results": [respond(res, k, 0, None, {"query": {"name": im.filename, "sha256": sha}})
                            for (sha, res), im in zip(results, images)]}

    @app.post("/v1/search/by-id/{item_id}", summary="more like this: search with a stored item (left out)")
    async def search_by_id(item_id: int, k: K = 10, refine: REFINE = DEFAULT_REFINE, refine_k: RK = None,
                           min_score: MIN = None, collapse: COLLAPSE = False, collapse_cosine: CC = None,
                           offset: OFFSET = 0, limit: LIMIT = None) -> dict:
        from starlette.concurrency import run_in_threadpool

        r, c = controls(k, refine, refine_k, min_score, collapse, collapse_cosine, offset, limit)
        feature = service.feature_of(item_id)
        result = await run_in_threadpool(service.search, SearchQuery(x=None, feature=feature, k=k, refine=r,
                                                                     controls=c, exclude=(int(item_id),)))
        return respond(result, k, offset, limit, {"query": {"id": int(item_id)}})

    @app.get("/v1/pages/{token}", summary="another page of an earlier result list (no new search)")
    def page(token: str, offset: OFFSET = 0, limit: Annotated[int, Query(ge=1, le=MAX_K)] = 10) -> dict:
        kept = service.page(token)
        return {"index": kept["index"], "total": len(kept["hits"]), "offset": offset,
                "results": kept["hits"][offset:offset + limit], "page_token": token}

    @app.get("/v1/items/{item_id}", summary="an item's record: id, path, label, sha256, added_at")
    def item(item_id: int) -> dict:
        return service.item(item_id)

    @app.get("/v1/items/{item_id}/image", summary="an item's image file (only under --allow-root)")
    def item_image(item_id: int):
        return FileResponse(service.item_file(item_id))

    @app.post("/v1/items", summary="add a photo (stored under the gallery root; needs the token)",
              dependencies=[Depends(authorized)])
    async def add_item(image: Annotated[UploadFile, File(description="the photo to add")],
                       label: Annotated[str | None, Form(description="its class (a folder name)")] = None) -> dict:
        from starlette.concurrency import run_in_threadpool

        data = await read_upload(image)
        try:
            return await run_in_threadpool(service.add, data, image.filename, label)
        except ImageLoadError as exc:
            raise _image_error(exc) from None

    @app.delete("/v1/items/{item_id}", summary="remove an item from the index (needs the token)",
                dependencies=[Depends(authorized)])
    def remove_item(item_id: int) -> dict:
        return service.remove(item_id)

    return app
