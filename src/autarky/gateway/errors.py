"""One place that turns gateway failures into the client's error envelope (OpenAI or Anthropic)."""

from __future__ import annotations

import orjson
from starlette.responses import Response

from autarky.contracts.wire import error_envelope

# OpenAI error `type` -> Anthropic error `type`, by HTTP status family.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
}


class GatewayError(Exception):
    """A failure the client should see, with its HTTP status and OpenAI error type/code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def openai_body(self) -> dict:
        return error_envelope(self.message, self.type, self.param, self.code)

    def anthropic_body(self) -> dict:
        kind = _ANTHROPIC_TYPES.get(self.status, "api_error" if self.status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": self.message}}

    def response(self, anthropic: bool = False, extra_headers: dict[str, str] | None = None) -> Response:
        body = self.anthropic_body() if anthropic else self.openai_body()
        headers = {**self.headers, **(extra_headers or {})}
        return Response(orjson.dumps(body), status_code=self.status, media_type="application/json", headers=headers)


def bad_request(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code="invalid_request")


def unauthorized(message: str = "missing or invalid API key; pass `Authorization: Bearer <key>`") -> GatewayError:
    return GatewayError(401, message, type="authentication_error", code="invalid_api_key")


def forbidden(message: str, code: str = "policy_denied") -> GatewayError:
    return GatewayError(403, message, type="permission_error", code=code)


def not_found(message: str, code: str = "model_not_found") -> GatewayError:
    return GatewayError(404, message, code=code)


def rate_limited(message: str, retry_after_s: float, code: str = "rate_limit_exceeded") -> GatewayError:
    return GatewayError(
        429, message, type="rate_limit_error", code=code, headers={"retry-after": str(max(1, round(retry_after_s)))}
    )


def budget_exceeded(message: str) -> GatewayError:
    # 429 (not 402) because the OpenAI SDKs treat 429 as "quota", and the error code says which quota.
    return GatewayError(429, message, type="insufficient_quota", code="budget_exceeded")


def upstream_failed(message: str, status: int = 502) -> GatewayError:
    return GatewayError(status, message, type="api_error", code="upstream_error")


def inband_openai(err: GatewayError) -> bytes:
    """An error after the first streamed byte: one `data:` event, then [DONE] (status stays 200)."""
    return b"data: " + orjson.dumps(err.openai_body()) + b"\n\ndata: [DONE]\n\n"


def inband_anthropic(err: GatewayError) -> bytes:
    return b"event: error\ndata: " + orjson.dumps(err.anthropic_body()) + b"\n\n"
