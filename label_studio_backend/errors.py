"""Errors that become HTTP 4xx answers with a JSON message (never a 500 with a trace)."""


class BackendError(Exception):
    """A problem with the request or its data; ``status_code`` is the HTTP status."""

    status_code = 400

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class BadRequest(BackendError):
    """Malformed request: bad JSON, missing or wrongly typed fields (HTTP 400)."""

    status_code = 400


class InvalidPrompt(BackendError):
    """A region that cannot be used as a prompt (HTTP 422)."""

    status_code = 422


class ImageError(BackendError):
    """The task image cannot be fetched or decoded (HTTP 422; 413 when too large, 403 when
    the URL is not allowed, 502/504 when Label Studio answers with an error or too slowly)."""

    status_code = 422
