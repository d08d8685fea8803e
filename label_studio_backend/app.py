"""FastAPI app speaking label-studio-ml 2.x's HTTP protocol.

Endpoints (as in HumanSignal/label-studio-ml-backend ``label_studio_ml/api.py``):
``GET /health`` and ``GET /`` (``{"status": "UP", ...}``), ``POST /setup``
(``{"model_version": ...}``), ``POST /predict`` (``{"results": [...], "model_version": ...}``),
``POST /webhook`` (201 for training events; START_TRAINING starts fine-tuning in the
background), ``POST /train`` (legacy training request with the annotated tasks),
``GET /metrics`` (JSON counters and the ``training`` status). Optional basic
auth (``BASIC_AUTH_USER``/``BASIC_AUTH_PASS``). Every problem with a request is a 4xx answer
``{"error": "..."}``; unexpected failures are a 500 ``{"error": ...}`` without a trace.

Request bodies are strict JSON (:func:`parse_json`: UTF-8, no ``NaN``/``Infinity``, no lone
surrogates, numbers that fit a double, at most :data:`MAX_JSON_DEPTH` levels of nesting),
at most ``max_request_bytes`` long and received within ``body_timeout`` seconds (else 408).
A client that disconnects before its body arrived is logged in one line, not as an error.
"""

import asyncio
import base64
import binascii
import hmac
import logging
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from pasam_plugins.imageio import ImageError as CoreImageError
from pasam_plugins.imageio import ImageTooLarge

from .errors import BackendError, BadRequest
from .model import PASamBackend

logger = logging.getLogger(__name__)

#: deeper JSON is refused (Label Studio's requests nest about 8 levels)
MAX_JSON_DEPTH = 64
#: longer error messages are cut (they can quote request data)
MAX_MESSAGE_CHARS = 2000


class _ClientGone(Exception):
    """The client disconnected before its request body arrived."""


def _clean(message: str) -> str:
    """An error message that always serializes: lone surrogates escaped, length bounded."""
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(message) > MAX_MESSAGE_CHARS:
        cut = len(message) - MAX_MESSAGE_CHARS
        message = f"{message[:MAX_MESSAGE_CHARS]}... ({cut} more characters)"
    return message


def _error(status: int, message: str, **extra: object) -> JSONResponse:
    return JSONResponse({"error": _clean(message), "status": status, **extra}, status_code=status)


def parse_json(raw: bytes | bytearray) -> object:
    """Parse a request body as strict JSON.

    Raises:
      BadRequest: empty, not UTF-8, not JSON, ``NaN``/``Infinity``, a lone surrogate, a
        number beyond a double's range, or nested deeper than :data:`MAX_JSON_DEPTH`.
    """
    if not raw.strip():
        raise BadRequest("empty request body: expected JSON")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"malformed JSON in the request body: {e}") from None
    if isinstance(value, dict | list) and raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:
        _check_depth(value)  # (fewer brackets than the limit cannot nest deeper)
    return value


def _check_depth(value: dict | list) -> None:
    stack: list[tuple[dict | list, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise BadRequest(f"the request body is nested more than {MAX_JSON_DEPTH} levels deep")
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))


def create_app(
    backend: PASamBackend,
    *,
    basic_auth: tuple[str, str] | None = None,
    max_request_bytes: int = 64 << 20,
    body_timeout: float = 60.0,
) -> FastAPI:
    """The HTTP app around an already loaded backend (weights are never loaded per request).

    Arguments:
      backend (PASamBackend): the model side.
      basic_auth (tuple or None): (user, password) required on every request.
      max_request_bytes (int): larger request bodies get HTTP 413.
      body_timeout (float): seconds to receive a request body (else HTTP 408).
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
        if length and length.isdigit() and (len(length) > 18 or int(length) > max_request_bytes):
            raise BackendError(
                f"request body too large: {length[:40]} bytes > {max_request_bytes}",
                status_code=413,
            )
        raw = bytearray()
        try:
            async with asyncio.timeout(body_timeout):
                async for chunk in request.stream():
                    raw += chunk
                    if len(raw) > max_request_bytes:
                        raise BackendError(
                            f"request body too large: > {max_request_bytes} bytes",
                            status_code=413,
                        )
        except TimeoutError:
            raise BackendError(
                f"the request body did not arrive within {body_timeout:g} s "
                f"({len(raw)} bytes received)",
                status_code=408,
            ) from None
        except ClientDisconnect:
            raise _ClientGone() from None
        # parse off the event loop: a 64 MiB body takes a while
        return await run_in_threadpool(parse_json, raw)

    @app.exception_handler(BackendError)
    async def backend_error(request: Request, exc: BackendError):
        backend.count_error()
        message = _clean(exc.message)
        logger.warning(
            "%s %s -> %d: %s", request.method, request.url.path, exc.status_code, message
        )
        return _error(exc.status_code, message)

    @app.exception_handler(CoreImageError)
    async def image_error(request: Request, exc: CoreImageError):
        # the core refuses an image it cannot embed (e.g. an extreme aspect ratio)
        status = 413 if isinstance(exc, ImageTooLarge) else 422
        return await backend_error(request, BackendError(str(exc), status_code=status))

    @app.exception_handler(_ClientGone)
    async def client_gone(request: Request, exc: _ClientGone):
        logger.info(
            "%s %s: the client disconnected before sending the whole request body",
            request.method,
            request.url.path,
        )
        return Response(status_code=400)  # nobody is listening

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception):
        backend.count_error()
        logger.exception("%s %s failed", request.method, request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    @app.get("/")
    @app.get("/health")
    async def health():
        await run_in_threadpool(backend.refresh)  # (a model another worker fine-tuned)
        answer = {
            "status": "UP",
            "model_class": "PASamBackend",
            "model_version": backend.model_version,
            # what the network is; says so when there is no uncertainty map or mined points
            "model": backend.predictor.model.origin.architecture(),
        }
        training = backend.training_status()
        if training is not None:
            answer["training"] = training
        return answer

    @app.post("/setup")
    async def setup(request: Request):
        body = await read_json(request)
        return await run_in_threadpool(backend.setup, body)

    @app.post("/predict")
    async def predict(request: Request):
        body = await read_json(request)
        # serialized in the worker thread by orjson: the RLE arrays can hold 10^5 numbers,
        # which FastAPI's jsonable_encoder or json.dumps on the event loop would walk slowly
        payload = await run_in_threadpool(backend.predict_json, body)
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
