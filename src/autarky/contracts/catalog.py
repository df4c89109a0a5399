"""The model catalog a gateway.toml declares: per model its provider, list prices and whether it runs in house.

    [providers.local]        in_house = true          (base_url, ... : the gateway's own business)
    [models.ours]            provider = "local"   usd_per_1m_input = 0.0   usd_per_1m_output = 0.0

Producer: the operator's gateway.toml (the gateway validates the whole file when it starts). Consumer: the eval
stage, which prices and labels the models it measures as the gateway will (`autarky eval run --gateway-config`).
Only these fields are read here, so the eval stage needs nothing of the gateway's code.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autarky.errors import UserError


@dataclass(frozen=True)
class CatalogEntry:
    provider: str
    usd_per_1m_input: float
    usd_per_1m_output: float
    in_house: bool


def read_gateway_toml(path: str | Path) -> dict[str, Any]:
    """The file as a plain tree (the gateway validates it whole, `read_catalog` reads its catalog)."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise UserError(f"gateway config {path} not found; start from examples/gateway.toml") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"gateway config {path} is not valid TOML: {exc}") from exc


def read_catalog(path: str | Path) -> dict[str, CatalogEntry]:
    """Every [models.NAME] of the file with its provider's in_house flag; UserError naming the field otherwise."""
    data = read_gateway_toml(path)
    providers, models = data.get("providers", {}), data.get("models", {})
    catalog = {}
    for name, model in models.items():
        provider = model.get("provider") if isinstance(model, dict) else None
        if not isinstance(provider, str) or not isinstance(providers.get(provider), dict):
            raise UserError(f"{path}: field models.{name}.provider: unknown provider {provider!r}")
        try:
            usd_in, usd_out = (float(model.get(k, 0.0)) for k in ("usd_per_1m_input", "usd_per_1m_output"))
        except (TypeError, ValueError):
            raise UserError(f"{path}: field models.{name}: prices must be numbers") from None
        catalog[name] = CatalogEntry(provider, usd_in, usd_out, bool(providers[provider].get("in_house", False)))
    return catalog
