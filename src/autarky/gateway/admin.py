"""Admin HTTP API, protected by the master key: create/list/revoke keys, verify the audit chain."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Collection

import orjson
from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from autarky.errors import UserError
from autarky.gateway import audit
from autarky.gateway.auth import KeyCache, create_key, list_keys, revoke_key
from autarky.gateway.errors import GatewayError, bad_request, unauthorized


def routes(engine: Engine, keys: KeyCache, master_key: str | None, master_key_env: str,
           teams: Collection[str] | None = None) -> list[Route]:
    """The admin endpoints over the key store `engine`; `keys` is the gateway's key cache (a revocation clears
    it); no master key (its variable `master_key_env` unset) disables them. `teams`: the config's teams, the
    only ones a new key may carry."""

    def guarded(handler):  # noqa: ANN001, ANN202
        async def endpoint(request: Request) -> Response:
            try:
                auth = request.headers.get("authorization", "")
                given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
                if not master_key:
                    raise GatewayError(403, f"admin API disabled: set {master_key_env} to enable it",
                                       type="permission_error", code="admin_disabled")
                if not given or not secrets.compare_digest(given, master_key):
                    raise unauthorized("the admin API needs `Authorization: Bearer <master key>`")
                data, status = await handler(request)
                return Response(orjson.dumps(data), status_code=status, media_type="application/json")
            except UserError as exc:
                return bad_request(exc.message).response()
            except GatewayError as exc:
                return exc.response()

        return endpoint

    async def create(request: Request) -> tuple[dict, int]:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise bad_request("body must be JSON: {\"team\": ..., \"budget_usd\": ..., ...}") from exc
        if not isinstance(body, dict) or not isinstance(body.get("team"), str):
            raise bad_request("team: required string", param="team")
        unknown = set(body) - {"team", "budget_usd", "rpm", "tpm", "models"}
        if unknown:  # named, but bounded: the names are the client's
            raise bad_request(f"unknown fields {sorted(unknown)[:5]}"[:300] + (" ..." if len(unknown) > 5 else ""))
        key, record = await asyncio.to_thread(
            create_key, engine, body["team"], budget_usd=body.get("budget_usd"), rpm=body.get("rpm"),
            tpm=body.get("tpm"), models=body.get("models"), actor="admin-api", teams=teams,
        )
        return {"key": key, "id": record.id, "team": record.team, "budget_usd": record.budget_usd,
                "rpm": record.rpm, "tpm": record.tpm, "models": list(record.models) if record.models else None}, 201

    async def listing(request: Request) -> tuple[dict, int]:
        return {"object": "list", "data": await asyncio.to_thread(list_keys, engine)}, 200

    async def revoke(request: Request) -> tuple[dict, int]:
        key_id = request.path_params["key_id"]
        await asyncio.to_thread(revoke_key, engine, key_id, "admin-api")
        keys.invalidate()  # this replica stops accepting it at once; others within the cache TTL
        return {"id": key_id, "revoked": True}, 200

    async def verify(request: Request) -> tuple[dict, int]:
        rows, problems = await asyncio.to_thread(audit.verify, engine)
        return {"rows": rows, "ok": not problems, "problems": problems}, 200

    return [
        Route("/admin/keys", guarded(create), methods=["POST"]),
        Route("/admin/keys", guarded(listing), methods=["GET"]),
        Route("/admin/keys/{key_id}", guarded(revoke), methods=["DELETE"]),
        Route("/admin/audit/verify", guarded(verify), methods=["GET"]),
    ]
