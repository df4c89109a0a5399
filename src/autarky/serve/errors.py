"""The one place that turns failures into the OpenAI error envelope {"error": {message, type, param, code}}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("autarky.serve")


class APIError(Exception):
    """An error with its HTTP status; raised anywhere in the server, rendered by the handlers below."""

    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class BadRequest(APIError):
    pass


class ContextOverflow(APIError):
    """Prompt plus requested completion do not fit the model's context (400, never 200)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="messages", code="context_length_exceeded")


class Unauthorized(APIError):
    status = 401
    type = "authentication_error"

    def __init__(self) -> None:
        super().__init__("Missing or invalid API key; send `Authorization: Bearer <key>`.", code="invalid_api_key")


class ModelNotFound(APIError):
    status = 404

    def __init__(self, name: str, available: list[str]) -> None:
        super().__init__(
            f"The model {name!r} does not exist; this server serves: {', '.join(available) or 'nothing'}",
            param="model", code="model_not_found",
        )


class QueueFull(APIError):
    status = 429
    type = "rate_limit_error"

    def __init__(self, limit: int) -> None:
        super().__init__(f"The server is at capacity ({limit} requests waiting); retry later.", code="queue_full")


class NotReady(APIError):
    status = 503
    type = "service_unavailable"

    def __init__(self, message: str = "The server is loading its models; retry shortly.") -> None:
        super().__init__(message, code="not_ready")


class EngineFailure(APIError):
    status = 500
    type = "server_error"


def error_body(message: str, type_: str = "server_error", code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _loc_to_param(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

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
        err = BadRequest(message, param=param, code="invalid_value")
        return JSONResponse(err.body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        body = {"error": {"message": str(exc.detail), "type": type_, "param": None, "code": exc.status_code}}
        return JSONResponse(body, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(error_body(f"internal error: {exc}"), status_code=500)
