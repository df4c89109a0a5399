"""The gateway: a plain Starlette app (few layers on the hot path) over router, dispatcher, limits and ledger.

Hot path per request: one orjson parse, a cached key lookup, a cached routing decision, the upstream call
on one shared pooled aiohttp session, one orjson dump, and an append to the ledger queue. Each request's
accounting lives in its `Exchange` (exchange.py), created and finished by `ExchangeEndpoint`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
import time

import aiohttp
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from autarky.gateway import admin, audit
from autarky.gateway.accounting import Accounting, LedgerAccounting
from autarky.gateway.auth import KeyCache, KeyRecord, Limiter
from autarky.gateway.breaker import Breaker
from autarky.gateway.capabilities import needs, prompt_tokens
from autarky.gateway.config import DATA_CLASSES, GatewayConfig
from autarky.gateway.dispatch import Dispatcher, client_error
from autarky.gateway.errors import GatewayError, bad_request, unauthorized
from autarky.gateway.exchange import Exchange, estimate_request
from autarky.gateway.intake import ClientGone, bearer_key, check_name, parse_body, read_body
from autarky.gateway.ledger import Ledger
from autarky.gateway.metrics import Metrics
from autarky.gateway.providers import KINDS, AnthropicProvider, UpstreamError
from autarky.gateway.router import Router
from autarky.gateway.routes import RoutesWatcher
from autarky.gateway.streaming import ExchangeStream
from autarky.gateway.translate import openai_response_to_anthropic
from autarky.store.database import open_store

log = logging.getLogger("autarky.gateway")
ANONYMOUS = KeyRecord(id="", team="default", budget_usd=None, spent_usd=0.0, rpm=None, tpm=None, models=None)
ADMIN = KeyRecord(id="", team="admin", budget_usd=None, spent_usd=0.0, rpm=None, tpm=None, models=None)


def json_response(data: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


class Gateway:
    """The app and everything it shares across requests. `accounting` replaces the key limiter and ledger as
    what requests settle through (tests pass a `MemoryAccounting`)."""

    def __init__(self, config: GatewayConfig, accounting: Accounting | None = None) -> None:
        self.config = config
        self.engine = open_store(config.store)
        audit.check_key(self.engine)  # before a port opens: never extend a keyed chain without its key
        self.metrics = Metrics()
        self.ledger = Ledger(self.engine, config.ledger_flush_s, shared=config.shared_limits(),
                             reservation_ttl_s=config.reservation_ttl_s)
        self.routes = RoutesWatcher(config.routes, on_reload=self._on_reload)
        self.router = Router(config, self.routes)
        self.keys = KeyCache(self.engine, config.key_cache_ttl_s)
        self.limiter = Limiter(self.engine, shared=config.shared_limits())
        self.accounting = accounting or LedgerAccounting(self.limiter, self.ledger)
        self.breakers = {name: Breaker(config.breaker.failure_threshold, config.breaker.cooldown_s)
                         for name in config.providers}
        self.session: aiohttp.ClientSession | None = None
        self.dispatcher: Dispatcher | None = None
        self.master_key = config.master_key()
        self.app = Starlette(routes=self._routes(), lifespan=self._lifespan)
        self.app.state.gateway = self

    # ---- lifecycle --------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette):  # noqa: ANN202
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    async def startup(self) -> None:
        # One pooled session for every upstream: connection reuse is most of the latency we can save.
        # aiohttp rather than httpx: on this 2-vCPU box httpx spent ~2.2 ms of CPU per proxied request
        # (pool bookkeeping, anyio layers) against ~0.15 ms for aiohttp, which alone would miss the target.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=True, raise_for_status=False)
        providers = {kind: cls(self.session, self.config.default_max_tokens) for kind, cls in KINDS.items()}
        self.dispatcher = Dispatcher(providers, self.breakers, self.config.retry, self.metrics)
        self.ledger.start()
        # Everything built so far lives as long as the process: move it out of the collector's way, so full
        # collections scan only per-request garbage.
        gc.collect()
        gc.freeze()

    async def shutdown(self) -> None:
        if self.session is not None:
            await self.session.close()
        await asyncio.to_thread(self.ledger.close)
        self.engine.dispose()

    def _on_reload(self, generation: int, error: str | None) -> None:
        detail = {"path": self.config.routes, "generation": generation}
        self.ledger.audit("gateway", "routes.reload_failed" if error else "routes.reload",
                          {**detail, "error": error} if error else detail)

    def _routes(self) -> list[Route]:
        return [
            Route("/v1/chat/completions", ExchangeEndpoint(self, "chat"), methods=["POST"]),
            Route("/v1/completions", ExchangeEndpoint(self, "completions"), methods=["POST"]),
            Route("/v1/messages", ExchangeEndpoint(self, "messages"), methods=["POST"]),
            Route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics_endpoint, methods=["GET"]),
            *admin.routes(self.engine, self.keys, self.master_key, self.config.master_key_env,
                           self.config.teams or None),
        ]

    # ---- small endpoints --------------------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        try:
            await self.authenticate(request)
        except GatewayError as exc:
            return exc.response()
        now = int(time.time())
        # A model deployed on several providers is owned by each of them, in failover order.
        data = [{"id": name, "object": "model", "created": now,
                 "owned_by": ",".join(p.provider for p in m.placements())} for name, m in self.config.models.items()]
        tasks = set(self.config.tasks) | set(self.routes.current().tasks)
        data += [{"id": f"task:{t}", "object": "model", "created": now, "owned_by": "autarky"} for t in sorted(tasks)]
        return json_response({"object": "list", "data": data})

    async def health(self, request: Request) -> Response:
        return json_response({"status": "ok", "routes_generation": self.routes.generation,
                              "routes_error": self.routes.last_error, "ledger_pending": self.ledger.pending})

    async def metrics_endpoint(self, request: Request) -> Response:
        body = self.metrics.render(self.breakers, self.ledger.pending)
        return Response(body, media_type="text/plain; version=0.0.4")

    async def count_tokens(self, request: Request) -> Response:
        """Anthropic's count_tokens: forwarded to the first capable Anthropic-kind candidate; with none, an
        estimate (4 bytes a token, marked `x-autarky-token-count: estimate`). No ledger row: nothing is generated."""
        try:
            key = await self.authenticate(request)
            raw = await self.body(request)
            body = parse_body(raw, "messages", count_only=True)
            data_class = request.headers.get("x-autarky-data-class")
            if data_class is not None and data_class not in DATA_CLASSES:
                raise bad_request(f"X-Autarky-Data-Class must be one of {list(DATA_CLASSES)}")
            decision = self.router.decide(body["model"], request.headers.get("x-autarky-task"), key.team,
                                          key.models, data_class, needs(body))
            original = orjson.loads(raw)
            original.pop("max_tokens", None)
            for target in decision.targets:
                assert self.dispatcher is not None
                provider = self.dispatcher.providers[target.provider_config.kind]
                if isinstance(provider, AnthropicProvider):
                    try:
                        data = await provider.count_tokens(target, original)
                    except UpstreamError as err:
                        if err.retryable or err.status == 404:
                            continue
                        raise client_error(err) from err
                    return json_response({"input_tokens": data["input_tokens"]},
                                         headers={"x-autarky-model": target.model})
            estimate = len(orjson.dumps(body.get("messages")) + orjson.dumps(body.get("tools") or [])) // 4 + 1
            return json_response({"input_tokens": estimate}, headers={"x-autarky-token-count": "estimate"})
        except GatewayError as exc:
            return exc.response(anthropic=True)
        except ClientGone:
            return Response(status_code=499)

    # ---- the hot path -----------------------------------------------------------------------------------

    async def body(self, request: Request) -> bytes:
        return await read_body(request, self.config.max_body_bytes, self.config.body_timeout_s)

    async def authenticate(self, request: Request) -> KeyRecord:
        key = bearer_key(request.headers.get("authorization"), request.headers.get("x-api-key"))
        if not key:
            if self.config.require_keys:
                raise unauthorized()
            return ANONYMOUS
        if self.master_key and secrets.compare_digest(key, self.master_key):
            return ADMIN
        record = await self.keys.get(key)
        if record is None or record.revoked:
            if not self.config.require_keys and record is None:
                return ANONYMOUS
            raise unauthorized("invalid or revoked API key")
        return record

    async def handle(self, request: Request, ex: Exchange, key: KeyRecord) -> Response:
        """The response to one authenticated API request; every failure becomes the client's error envelope.
        The caller finishes `ex` (its one ledger row) after the response went out."""
        anthropic = ex.usage.endpoint == "messages"
        try:
            return await self._respond(request, ex, anthropic, key)
        except GatewayError as exc:
            ex.fail(exc.status, exc.message[:1000])  # bounded: the ledger keeps it
            return exc.response(anthropic, ex.error_headers())
        except ClientGone:
            ex.fail(499, "client disconnected")
            return Response(status_code=499)
        except asyncio.CancelledError:
            ex.fail(499, "cancelled")
            raise
        except Exception as exc:  # a bug: still one envelope, one ledger row, and a traceback in the log
            log.exception("request %s failed inside the gateway", ex.request_id)
            internal = GatewayError(500, f"internal gateway error ({type(exc).__name__}); see the gateway log",
                                    type="api_error", code="internal_error")
            ex.fail(internal.status, internal.message)
            return internal.response(anthropic, ex.error_headers())

    async def _respond(self, request: Request, ex: Exchange, anthropic: bool, key: KeyRecord) -> Response:
        endpoint = ex.usage.endpoint
        ex.authenticated(key, store_content=self._stores_content(key.team))
        body = parse_body(await self.body(request), endpoint)
        name = body.get("model")
        check_name(request.headers.get("x-autarky-task"), "X-Autarky-Task")
        data_class = request.headers.get("x-autarky-data-class")
        if data_class is not None and data_class not in DATA_CLASSES:
            raise bad_request(f"X-Autarky-Data-Class must be one of {list(DATA_CLASSES)}")
        try:
            decision = self.router.decide(name, request.headers.get("x-autarky-task"), key.team, key.models,
                                          data_class, needs(body) if endpoint != "completions" else None,
                                          prompt_tokens(body))
        except GatewayError as exc:
            if exc.status == 403:
                ex.audit("policy.deny", {"key_id": key.id, "team": key.team, "model": name, "reason": exc.message})
            raise
        ex.routed(decision)
        targets = decision.targets
        if endpoint == "completions":
            targets = tuple(t for t in targets if t.provider_config.kind == "openai")
            if not targets:
                raise bad_request(f"{name!r} has no OpenAI-kind provider; /v1/completions needs one")
        try:
            worst = estimate_request(body, targets, self.config.default_max_tokens)
            await ex.admit(worst.usd if key.budget_usd is not None else 0.0, worst.tokens)
        except GatewayError as exc:
            if exc.code == "budget_exceeded":
                ex.audit("policy.budget_deny", {"key_id": key.id, "team": key.team})
            raise
        egress = "completions" if endpoint == "completions" else "chat"
        if body.get("stream"):
            first, rest = await self.dispatcher.open_stream(targets, body, egress, ex.outcome)
            return ExchangeStream(ex, body, first, rest, self.breakers[ex.outcome.target.provider], anthropic)
        result = await _until_disconnect(request, self.dispatcher.complete(targets, body, egress, ex.outcome))
        u = result.get("usage") or {}
        ex.settle(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
        if ex.store_content:
            ex.usage.content = orjson.dumps({"request": body, "response": result}).decode()
        model = ex.outcome.target.model
        result["model"] = model
        response = json_response(openai_response_to_anthropic(result, model) if anthropic else result,
                                 headers=ex.headers())
        ex.succeeded()
        return response

    def _stores_content(self, team: str) -> bool:
        t = self.config.teams.get(team)
        return bool(t and t.store_prompts)


class ExchangeEndpoint:
    """The ASGI endpoint of one API route, and the one place that guarantees one ledger row per request: the
    exchange is created here and finished after its response went out, streamed or not, whatever happened."""

    def __init__(self, gateway: Gateway, endpoint: str) -> None:
        self.gateway = gateway
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            key = await self.gateway.authenticate(request)
        except GatewayError as exc:
            # No ledger row for a request nobody is accountable for: a keyless flood must not grow the store.
            # The metrics still count it.
            self.gateway.metrics.requests.labels(self.endpoint, "", str(exc.status)).inc()
            await exc.response(self.endpoint == "messages")(scope, receive, send)
            return
        ex = Exchange(self.gateway.accounting, self.endpoint, self.gateway.metrics)
        try:
            response = await self.gateway.handle(request, ex, key)
            await response(scope, receive, send)
        except OSError:  # the client's connection broke while we wrote: a 499, not a traceback
            ex.fail(499, "client disconnected")
        finally:
            ex.finish()


async def _until_disconnect(request: Request, coro):  # noqa: ANN001, ANN202
    """Run the upstream call, cancelling it if the client disconnects first."""
    call = asyncio.ensure_future(coro)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait((call, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if call.done():
        return call.result()
    call.cancel()
    with contextlib.suppress(BaseException):
        await call
    raise ClientGone
