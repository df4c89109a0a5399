"""The one place that turns failures into the OpenAI error envelope {"error": {message, type, param, code}} and an
HTTP status: the domain errors of autarky.serve.errors, FastAPI's validation errors, unknown routes, and bugs."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from autarky.contracts.wire import error_envelope
from autarky.serve.errors import (
    ContextLengthExceeded,
    GenerationFailed,
    InvalidRequest,
    KVCacheTooSmall,
    ModelNotFound,
    NotReady,
    QueueFull,
    ServeError,
    Unauthorized,
)

log = logging.getLogger("autarky.serve")

# Each domain error's status, OpenAI error type and code.
HTTP: dict[type[ServeError], tuple[int, str, str | None]] = {
    InvalidRequest: (400, "invalid_request_error", None),
    KVCacheTooSmall: (400, "invalid_request_error", "kv_cache_too_small"),
    Unauthorized: (401, "authentication_error", "invalid_api_key"),
    ModelNotFound: (404, "invalid_request_error", "model_not_found"),
    QueueFull: (429, "rate_limit_error", "queue_full"),
    NotReady: (503, "service_unavailable", "not_ready"),
    GenerationFailed: (500, "server_error", None),
    ServeError: (400, "invalid_request_error", None),
}


def error_response(exc: ServeError) -> JSONResponse:
    """The status and envelope a client sees for `exc`."""
    if isinstance(exc, ContextLengthExceeded):  # 400, never 200; the numbers in error.context
        return JSONResponse(exc.overflow.envelope(param=exc.param or "messages"), status_code=400)
    status, type_, code = next(HTTP[kind] for kind in type(exc).__mro__ if kind in HTTP)
    if isinstance(exc, InvalidRequest):
        code = exc.code
    return JSONResponse(error_envelope(exc.message, type_, exc.param, code), status_code=status)


def _loc_to_param(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def _serve_error(_: Request, exc: ServeError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        # OpenAI answers 400 with one message naming the field; FastAPI's default is a 422 with a list.
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        param = _loc_to_param(tuple(first.get("loc", ())))
        where = f" (field {param!r})" if param else ""
        message = f"{first.get('msg', 'invalid request')}{where}"
        if len(errors) > 1:
            message += f"; and {len(errors) - 1} more problem(s)"
        return error_response(InvalidRequest(message, param=param, code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_envelope(str(exc.detail), type_, code=exc.status_code), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(error_envelope(f"internal error: {exc}", "server_error"), status_code=500)
