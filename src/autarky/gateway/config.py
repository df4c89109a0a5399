"""gateway.toml as pydantic models: providers, their models, product tasks, teams and the policy.

Defaults live here; examples/gateway.toml documents every field. A bad file raises UserError naming the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from autarky.contracts.catalog import read_gateway_toml
from autarky.errors import UserError
from autarky.paths import default_store_url
from autarky.serve.connections import DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_HEADER_BYTES

# Ordered from least to most sensitive: a provider cleared for a class is cleared for every class before it.
DATA_CLASSES = ("public", "internal", "confidential", "restricted")
DataClass = Literal["public", "internal", "confidential", "restricted"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderConfig(_Strict):
    kind: Literal["openai", "anthropic"] = "openai"
    base_url: str  # e.g. http://127.0.0.1:8000/v1 (OpenAI kind) or https://api.anthropic.com (Anthropic kind)
    api_key_env: str | None = None
    region: str = "local"
    retains_data: bool = False
    in_house: bool = False
    # The most sensitive class it may receive; default: "restricted" in house (our own hardware), "public" else.
    max_data_class: DataClass | None = None
    timeout_s: float = Field(60.0, gt=0)
    connect_timeout_s: float = Field(2.0, gt=0)
    stream_usage: bool = True  # ask OpenAI-kind upstreams for a usage chunk (Azure rejects stream_options)
    # Ask OpenAI-kind upstreams for usage on every chunk (vLLM's stream_options.continuous_usage_stats), so an
    # Anthropic client's message_start carries the real input-token count. Default: in_house.
    continuous_usage_stats: bool | None = None

    def continuous_usage(self) -> bool:
        return self.in_house if self.continuous_usage_stats is None else self.continuous_usage_stats

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def cleared_for(self, data_class: str) -> bool:
        if self.retains_data:
            ceiling = "public"
        else:
            ceiling = self.max_data_class or ("restricted" if self.in_house else "public")
        return DATA_CLASSES.index(data_class) <= DATA_CLASSES.index(ceiling)


class Deployment(_Strict):
    """One more place a model is deployed: another provider (its own breaker), the id it knows it by, and what
    differs there: its prices (the ledger charges the deployment that answered) and its context window. Unset
    fields are the model's own."""

    provider: str
    upstream_id: str | None = None
    usd_per_1m_input: float | None = Field(None, ge=0, allow_inf_nan=False)
    usd_per_1m_output: float | None = Field(None, ge=0, allow_inf_nan=False)
    context_window: int | None = Field(None, gt=0)


class ModelEntry(_Strict):
    """One `[models.NAME]` table: a model the gateway serves, its provider and its price (not the network's
    shape, which is `autarky.model.ModelConfig`)."""

    provider: str
    upstream_id: str | None = None  # the id the provider knows it by; defaults to the gateway name
    # More deployments of the same model on other providers: requests are spread over every deployment whose
    # breaker is closed, and fail over between them.
    deployments: list[Deployment] = []
    usd_per_1m_input: float = Field(0.0, ge=0)
    usd_per_1m_output: float = Field(0.0, ge=0)
    context_window: int = Field(8192, gt=0)
    # What this model can carry: "tools", "json_schema", "images", "thinking". None: the provider's default
    # (capabilities.supports); requests needing more go to another candidate or get a 400 naming the field.
    supports: list[Literal["tools", "json_schema", "images", "thinking"]] | None = None

    def placements(self) -> list[ModelEntry]:
        """This entry once per deployment (the first is `provider` itself), each with no further deployments."""
        first = self.model_copy(update={"deployments": []}) if self.deployments else self
        return [first] + [self.model_copy(update={"deployments": [], "provider": d.provider, "upstream_id": d.upstream_id,
                                                  **{k: v for k, v in d.model_dump().items() if v is not None}})
                          for d in self.deployments]

    def usd_per_1k(self) -> float:
        return (self.usd_per_1m_input + self.usd_per_1m_output) / 2 / 1000

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.usd_per_1m_input + completion_tokens * self.usd_per_1m_output) / 1e6


class TaskConfig(_Strict):
    candidates: list[str] = []  # rank order, used when the routing table has no entry for the task
    data_class: DataClass = "internal"


class TeamConfig(_Strict):
    models: list[str] | None = None  # None = every model
    regions: list[str] | None = None
    data_class: DataClass = "internal"  # the least sensitive class this team's traffic is treated as
    self_sufficient: bool | None = None  # overrides the global policy when set
    max_usd_per_1k_tokens: float | None = None
    store_prompts: bool = False  # prompts and completions are never stored unless a team opts in


class PolicyConfig(_Strict):
    self_sufficient: bool = False
    allowed_regions: list[str] | None = None
    max_usd_per_1k_tokens: float | None = None
    latency_target_ms: float | None = None  # candidates slower than this go after those within it
    # "table": keep the routing table's rank (the eval stage ranks by score then cost, and may state an
    # in-house preference); "score": re-rank allowed candidates by score, then cost, then latency.
    order: Literal["table", "score"] = "table"
    default_data_class: DataClass = "internal"


class RetryConfig(_Strict):
    max_retries: int = Field(2, ge=0)  # per candidate, after the first attempt
    backoff_base_s: float = Field(0.05, ge=0)
    backoff_max_s: float = Field(2.0, ge=0)
    max_retry_after_s: float = Field(5.0, ge=0)  # a longer Retry-After fails over instead of waiting


class BreakerConfig(_Strict):
    failure_threshold: int = Field(5, ge=1)
    cooldown_s: float = Field(10.0, gt=0)


class GatewayConfig(_Strict):
    store: str = Field(default_factory=default_store_url)
    routes: str | None = None  # routing-table TOML (from `autarky eval routes`); hot-reloaded
    master_key_env: str = "AUTARKY_MASTER_KEY"
    require_keys: bool = True
    limits: Literal["auto", "local", "shared"] = "auto"  # shared = counters in the store (PostgreSQL replicas)
    key_cache_ttl_s: float = Field(5.0, ge=0)
    ledger_flush_s: float = Field(0.2, gt=0)
    default_max_tokens: int = Field(1024, gt=0)  # Anthropic egress requires max_tokens
    max_body_bytes: int = Field(16 * 2**20, gt=0)  # larger request bodies are a 413
    body_timeout_s: float = Field(30.0, gt=0)  # a body not received within this is a 408 and the connection closes
    # A request's headers not received within this (from its first byte, or from the connection's opening) close
    # the connection: a trickle of header bytes cannot hold sockets open (serve.connections).
    header_timeout_s: float = Field(DEFAULT_HEADER_TIMEOUT_S, gt=0, allow_inf_nan=False)
    max_header_bytes: int = Field(DEFAULT_MAX_HEADER_BYTES, gt=0)  # larger request headers are a 431
    # A budget reservation (shared limits) older than this is released even if no gateway settled it: the
    # backstop for a gateway killed on a host where none restarts. Longer than any request may take.
    reservation_ttl_s: float = Field(3600.0, gt=0, allow_inf_nan=False)
    policy: PolicyConfig = PolicyConfig()
    retry: RetryConfig = RetryConfig()
    breaker: BreakerConfig = BreakerConfig()
    providers: dict[str, ProviderConfig] = {}
    models: dict[str, ModelEntry] = {}
    tasks: dict[str, TaskConfig] = {}
    teams: dict[str, TeamConfig] = {}

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        for name, model in self.models.items():
            if model.provider not in self.providers:
                raise ValueError(f"models.{name}.provider: unknown provider {model.provider!r}")
            seen = {model.provider}
            for i, d in enumerate(model.deployments):
                if d.provider not in self.providers:
                    raise ValueError(f"models.{name}.deployments.{i}.provider: unknown provider {d.provider!r}")
                if d.provider in seen:  # one breaker per provider: a second deployment there would share it
                    raise ValueError(f"models.{name}.deployments.{i}.provider: {d.provider!r} is listed twice")
                seen.add(d.provider)
        for name, task in self.tasks.items():
            for model in task.candidates:
                if model not in self.models:
                    raise ValueError(f"tasks.{name}.candidates: unknown model {model!r}")
        return self

    def master_key(self) -> str | None:
        return os.environ.get(self.master_key_env)

    def shared_limits(self) -> bool:
        return self.limits == "shared" or (self.limits == "auto" and not self.store.startswith("sqlite"))


def parse_config(data: dict, source: str = "gateway config") -> GatewayConfig:
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise UserError(f"{source}: field {where}: {err['msg']}; see examples/gateway.toml") from exc


def load_config(path: str | Path) -> GatewayConfig:
    path = Path(path)
    data = read_gateway_toml(path)
    if data.get("routes") and not Path(data["routes"]).is_absolute():
        data["routes"] = str(path.parent / data["routes"])  # relative to the config file, not the cwd
    return parse_config(data, str(path))
