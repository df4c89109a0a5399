"""The demo's gateway configuration must load and route as the demo's story says: in-house first, the simulated
partner only as a fallback, and never under self_sufficient."""

from pathlib import Path

import pytest

from autarky.demo.operate import TASKS, write_gateway_config
from autarky.gateway.config import load_config
from autarky.gateway.errors import GatewayError
from autarky.gateway.router import Router
from autarky.gateway.routes import RoutesWatcher

PORTS = {"nano": 18001, "smollm2": 18002, "gateway": 18003, "gateway_ss": 18004}


def router_for(tmp_path: Path, self_sufficient: bool) -> Router:
    path = write_gateway_config(tmp_path / f"gateway-{self_sufficient}.toml", PORTS, self_sufficient)
    config = load_config(path)
    return Router(config, RoutesWatcher(None))


def test_every_product_task_routes_in_house_first(tmp_path: Path) -> None:
    router = router_for(tmp_path, self_sufficient=False)
    for task in TASKS:
        plan = router.decide(f"task:{task}", team="product")
        models = [target.model for target in plan.targets]
        assert models[-1] == "partner-mini", f"{task}: the partner is the last resort, got {models}"
        assert set(models[:-1]) == {"nano-demo", "smollm2"}


def test_self_sufficient_never_routes_to_the_partner(tmp_path: Path) -> None:
    router = router_for(tmp_path, self_sufficient=True)
    for task in TASKS:
        models = [target.model for target in router.decide(f"task:{task}", team="product").targets]
        assert "partner-mini" not in models and models
    with pytest.raises(GatewayError):
        router.decide("partner-mini", team="product")


def test_partner_stays_a_fallback_behind_an_eval_routing_table(tmp_path: Path) -> None:
    routes = tmp_path / "routes.toml"  # the gateway config names routes.toml beside itself
    routes.write_text("\n".join(
        f'[[tasks.{task}.candidates]]\nmodel = "{model}"\nscore = {score}\n'
        for task in TASKS for model, score in (("smollm2", 0.6), ("nano-demo", 0.2))))
    path = write_gateway_config(tmp_path / "gateway.toml", PORTS, self_sufficient=False)
    router = Router(load_config(path), RoutesWatcher(str(routes)))
    for task in TASKS:
        models = [target.model for target in router.decide(f"task:{task}", team="product").targets]
        assert models == ["smollm2", "nano-demo", "partner-mini"]
