"""The model catalog a gateway.toml declares: per model each deployment's provider, list prices and whether it
runs in house.

    [providers.local]        in_house = true          (base_url, ... : the gateway's own business)
    [models.ours]            provider = "local"   usd_per_1m_input = 0.0   usd_per_1m_output = 0.0
                             deployments = [{provider = "partner", usd_per_1m_input = 0.2, usd_per_1m_output = 0.8}]

Producer: the operator's gateway.toml (the gateway validates the whole file when it starts). Consumer: the eval
stage, which prices and labels the models it measures as the gateway will (`autarky eval run --gateway-config`).
Only these fields are read here, so the eval stage needs nothing of the gateway's code.

A model with several deployments is one model to its callers: the gateway takes turns over the deployments
(each request's first choice rotates) and charges the one that answered. So the model's summary is:
- prices: the mean over its deployments (what a request costs on average under that rotation; a deployment
  without its own prices has the model's);
- in house: only if every deployment is, since otherwise part of its traffic leaves our hardware;
- provider: the one deployment's, or "" for several, so that a routing table written from an eval does not pin
  the model to one deployment (the gateway resolves an empty provider to all of them).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autarky.errors import UserError


@dataclass(frozen=True)
class CatalogDeployment:
    provider: str
    usd_per_1m_input: float
    usd_per_1m_output: float
    in_house: bool


@dataclass(frozen=True)
class CatalogEntry:
    """A model's summary (see the module's docstring) and its deployments, the first being [models.NAME]'s own
    provider. Built from the summary fields alone, it is a model with that one deployment."""

    provider: str
    usd_per_1m_input: float
    usd_per_1m_output: float
    in_house: bool
    deployments: tuple[CatalogDeployment, ...] = ()

    def __post_init__(self) -> None:
        if not self.deployments:
            object.__setattr__(self, "deployments", (CatalogDeployment(
                self.provider, self.usd_per_1m_input, self.usd_per_1m_output, self.in_house),))

    @classmethod
    def of(cls, deployments: list[CatalogDeployment]) -> CatalogEntry:
        n = len(deployments)
        return cls(deployments[0].provider if n == 1 else "",
                   sum(d.usd_per_1m_input for d in deployments) / n, sum(d.usd_per_1m_output for d in deployments) / n,
                   all(d.in_house for d in deployments), tuple(deployments))


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
    """Every [models.NAME] of the file with each deployment's prices and in-house flag; UserError naming the field
    otherwise."""
    data = read_gateway_toml(path)
    providers, models = data.get("providers", {}), data.get("models", {})
    catalog = {}
    for name, model in models.items():
        if not isinstance(model, dict):
            raise UserError(f"{path}: field models.{name}: must be a table")
        extra = model.get("deployments", [])
        if not isinstance(extra, list) or not all(isinstance(d, dict) for d in extra):
            raise UserError(f"{path}: field models.{name}.deployments: must be a list of tables")
        places = [(f"models.{name}", model)] + [(f"models.{name}.deployments.{i}", d) for i, d in enumerate(extra)]
        deployments = []
        for where, place in places:
            provider = place.get("provider")
            if not isinstance(provider, str) or not isinstance(providers.get(provider), dict):
                raise UserError(f"{path}: field {where}.provider: unknown provider {provider!r}")
            try:  # a deployment's own prices, else the model's
                usd_in, usd_out = (float(place.get(k, model.get(k, 0.0)))
                                   for k in ("usd_per_1m_input", "usd_per_1m_output"))
            except (TypeError, ValueError):
                raise UserError(f"{path}: field {where}: prices must be numbers") from None
            if not (0 <= usd_in < math.inf and 0 <= usd_out < math.inf):  # nan fails too
                raise UserError(f"{path}: field {where}: prices must be finite and not negative")
            deployments.append(CatalogDeployment(provider, usd_in, usd_out,
                                                 bool(providers[provider].get("in_house", False))))
        catalog[name] = CatalogEntry.of(deployments)
    return catalog
