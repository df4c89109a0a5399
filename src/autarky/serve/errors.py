"""What can go wrong with a request, in the engine's terms: no HTTP statuses or types here.

The engine, the registry and the routes raise these; `autarky.serve.http_errors` is the one place that turns each
into the OpenAI error envelope with its status.
"""

from __future__ import annotations

from autarky.contracts.wire import ContextOverflow


class ServeError(Exception):
    """A request the server does not serve; the message says why (and what to do) in one sentence or two."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param  # the request field at fault, if one is


class InvalidRequest(ServeError):
    """The request can never run as sent. `code` names the kind of fault, as OpenAI's error codes do."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, param=param)
        self.code = code


class ContextLengthExceeded(ServeError):
    """Prompt plus requested completion do not fit the model's context; the numbers travel as fields."""

    def __init__(self, overflow: ContextOverflow, param: str = "messages") -> None:
        super().__init__(overflow.message, param=param)
        self.overflow = overflow


class KVCacheTooSmall(InvalidRequest):
    """Prompt plus requested completion need more KV cache than the whole pool: it could never run."""

    def __init__(self, prompt_tokens: int, max_tokens: int, capacity: int) -> None:
        super().__init__(
            f"This request needs {prompt_tokens + max_tokens} tokens of KV cache ({prompt_tokens} in the prompt, "
            f"{max_tokens} to generate), more than this server's whole cache of {capacity} tokens; send a "
            f"shorter prompt or fewer max_tokens, or start the server with a larger --kv-cache-gb.",
            param="max_tokens", code="kv_cache_too_small")


class Unauthorized(ServeError):
    def __init__(self) -> None:
        super().__init__("Missing or invalid API key; send `Authorization: Bearer <key>`.")


class ModelNotFound(ServeError):
    def __init__(self, name: str, available: list[str]) -> None:
        super().__init__(
            f"The model {name!r} does not exist; this server serves: {', '.join(available) or 'nothing'}",
            param="model",
        )


class QueueFull(ServeError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"The server is at capacity ({limit} requests waiting); retry later.")


class NotReady(ServeError):
    def __init__(self, message: str = "The server is loading its models; retry shortly.") -> None:
        super().__init__(message)


class GenerationFailed(ServeError):
    """The engine failed the request (or the client went away before it finished)."""
