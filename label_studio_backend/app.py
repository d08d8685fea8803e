"""FastAPI app speaking label-studio-ml 2.x's HTTP protocol.

Endpoints (as in HumanSignal/label-studio-ml-backend ``label_studio_ml/api.py``):
``GET /health`` and ``GET /`` (``{"status": "UP", ...}``), ``POST /setup``
(``{"model_version": ...}``), ``POST /predict`` (``{"results": [...], "model_version": ...}``),
``POST /webhook`` (201 for training events; START_TRAINING starts fine-tuning in the
background), ``POST /train`` (legacy training request with the annotated tasks),
``GET /metrics`` (JSON counters and the ``training`` status). Optional basic
auth (``BASIC_AUTH_USER``/``BASIC_AUTH_PASS``). Every problem with a request is a 4xx answer
``{"error": "..."}``; unexpected failures are a 500 ``{"error": ...}`` without a trace.
"""

import base64
import binascii
import hmac
import json
import logging
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from .errors import BackendError, BadRequest
from .model import PASamBackend

logger = logging.getLogger(__name__)


def _error(status: int, message: str, **extra: object) -> JSONResponse:
    return JSONResponse({"error": message, "status": status, **extra}, status_code=status)


def create_app(
    backend: PASamBackend,
    *,
    basic_auth: tuple[str, str] | None = None,
    max_request_bytes: int = 64 << 20,
) -> FastAPI:
    """The HTTP app around an already loaded backend (weights are never loaded per request).

    Arguments:
      backend (PASamBackend): the model side.
      basic_auth (tuple or None): (user, password) required on every request.
      max_request_bytes (int): larger request bodies get HTTP 413.
    """
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        backend.close()  # stop a running fine-tuning

    app = FastAPI(
        title="PA-SAM Label Studio ML backend", version=backend.model_version, lifespan=lifespan
    )
    app.state.backend = backend

    @app.middleware("http")
    async def check_auth(request: Request, call_next):
        if basic_auth is not None and not _authorized(request, basic_auth):
            return JSONResponse(
                {"error": "Unauthorized", "status": 401},
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="Login required"'},
            )
        return await call_next(request)

    async def read_json(request: Request) -> object:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_request_bytes:
            raise BackendError(
                f"request body too large: {length} bytes > {max_request_bytes}", status_code=413
            )
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > max_request_bytes:
                raise BackendError(
                    f"request body too large: > {max_request_bytes} bytes", status_code=413
                )
        if not raw.strip():
            raise BadRequest("empty request body: expected JSON")
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"malformed JSON in the request body: {e}") from None

    @app.exception_handler(BackendError)
    async def backend_error(request: Request, exc: BackendError):
        backend.count_error()
        logger.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status_code, exc.message)
        return _error(exc.status_code, exc.message)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception):
        backend.count_error()
        logger.exception("%s %s failed", request.method, request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    @app.get("/")
    @app.get("/health")
    async def health():
        answer = {"status": "UP", "model_class": "PASamBackend", "model_version": backend.model_version}
        training = backend.training_status()
        if training is not None:
            answer["training"] = training
        return answer

    @app.post("/setup")
    async def setup(request: Request):
        body = await read_json(request)
        return backend.setup(body)

    @app.post("/predict")
    async def predict(request: Request):
        body = await read_json(request)
        # serialize in the worker thread with orjson: the RLE lists can hold 10^5 numbers,
        # which FastAPI's jsonable_encoder or json.dumps on the event loop would walk slowly
        payload = await run_in_threadpool(lambda: orjson.dumps(backend.predict(body)))
        return Response(content=payload, media_type="application/json")

    @app.post("/webhook")
    async def webhook(request: Request):
        body = await read_json(request)
        answer, status = await run_in_threadpool(backend.webhook, body)
        return JSONResponse(answer, status_code=status)

    @app.post("/train")
    async def train(request: Request):
        body = await read_json(request)
        answer, status = await run_in_threadpool(backend.train, body)
        return JSONResponse(answer, status_code=status)

    @app.get("/metrics")
    async def metrics():
        return backend.metrics()

    @app.get("/versions")
    async def versions():
        return {"versions": [backend.model_version]}

    return app


def _authorized(request: Request, expected: tuple[str, str]) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return False
    try:
        user, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    ok_user = hmac.compare_digest(user.encode(), expected[0].encode())
    ok_pass = hmac.compare_digest(password.encode(), expected[1].encode())
    return ok_user and ok_pass
