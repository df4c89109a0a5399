"""The demo's second half: serve the in-house and the open model, put the gateway in front, evaluate both on
every product suite, route by the results, then run product traffic through an outage drill and with
self_sufficient = true."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import openai
from rich.table import Table

from autarky.demo import private
from autarky.demo.drill import BurstReport, burst
from autarky.demo.runner import DemoRunner
from autarky.demo.structured import tools_and_json
from autarky.demo.traffic import timed_chat
from autarky.gateway.server import free_port


def product_tasks() -> list[str]:
    """The product tasks the bundled suites test (suite.toml `task`): the gateway routes these."""
    from autarky.evals.suite import bundled_suite_names, load_suite

    return sorted({load_suite(name).config.task for name in bundled_suite_names()})


TASKS = product_tasks()
KEY_ENV = "AUTARKY_DEMO_KEY"
KEY_ENVS = {"gateway": KEY_ENV, "gateway_ss": "AUTARKY_DEMO_KEY_SS"}  # each gateway has its own store


@dataclass(frozen=True)
class OperateSettings:
    nano_dir: Path
    workdir: Path
    eval_limit: int = 4
    burst_requests: int = 60
    burst_concurrency: int = 8
    adapter_dir: Path | None = None  # the private-data LoRA adapter, served over smollm2 as private.ADAPTER
    private: private.PrivateSettings | None = None


def operate(runner: DemoRunner, settings: OperateSettings, figures: private.PrivateFigures | None = None) -> dict:
    figures = figures or private.PrivateFigures()


    ports = {name: free_port() for name in ("nano", "smollm2", "gateway", "gateway_ss")}
    summary: dict = {}
    with runner.section("serve: the in-house model and SmolLM2-135M-Instruct, OpenAI-compatible"):
        # One thread per server: two servers on two cores; oversubscribed OpenMP threads slow decode 2-4x.
        runner.start_server("serve-nano", ["serve", f"nano-demo={settings.nano_dir}", "--port", ports["nano"],
                                           "--threads", 1, "--log-level", "warning"],
                            f"http://127.0.0.1:{ports['nano']}/health")
        # fp32, not --quantize bf16: bf16 matmuls are ~2x faster here but flip SmolLM2's greedy answers at
        # near-ties (it answered the France question with nonsense), and the eval should judge the model.
        # One engine for the base and the private adapter: requests for either share its batches.
        lora = ["--lora", f"{private.ADAPTER}={settings.adapter_dir}"] if settings.adapter_dir else []
        runner.start_server("serve-smollm2", ["serve", "smollm2=smollm2", *lora, "--port", ports["smollm2"],
                                              "--threads", 1, "--log-level", "warning"],
                            f"http://127.0.0.1:{ports['smollm2']}/health")
        _first_requests(runner, ports)

    with runner.section("gateway: one endpoint for every product, keys and budgets"):
        for name, self_sufficient in (("gateway", False), ("gateway_ss", True)):
            config = write_gateway_config(settings.workdir / f"{name}.toml", ports, self_sufficient,
                                          adapter=settings.adapter_dir is not None)
            runner.start_server(name, ["gateway", "--config", config, "--port", ports[name]],
                                f"http://127.0.0.1:{ports[name]}/health")
            # One store per gateway: SQLite keeps budgets in one process's memory (PostgreSQL shares them).
            output = runner.run(["keys", "create", "--team", "product", "--budget-usd", "5", "--config", config],
                                capture=True)
            os.environ[KEY_ENVS[name]] = output.strip().splitlines()[-1]
        runner.console.print("created a key for team [bold]product[/bold] on each gateway (stored only as a hash)")

    gateway_url = f"http://127.0.0.1:{ports['gateway']}/v1"
    # A stated subset: the first eval_limit items of each suite (the suites hold 120-210 items each, enough to
    # decide; without --limit `autarky eval run` grades them all), so the demo's time stays what it was.
    with runner.section(f"eval: the first {settings.eval_limit} items of every product suite, both models, "
                        "through the gateway"):
        models = [f"--model=nano-demo={gateway_url}", f"--model=smollm2={gateway_url}"]
        runner.run(["eval", "run", *models, "--limit", settings.eval_limit, "--concurrency", 4,
                    "--api-key-env", KEY_ENV, "--config", settings.workdir / "gateway.toml",
                    "--mode", "nano-demo=completions", "--max-tokens-cap", 160,
                    "--data-dir", settings.workdir / "data"])
    if settings.private and settings.adapter_dir:
        private.decide(runner, settings.private, figures, gateway_url, settings.workdir / "gateway.toml", KEY_ENV)

    with runner.section("routes: the routing table and the HTML report from every stored result"):
        runner.run(["eval", "routes", "--out", settings.workdir / "routes.toml", "--prefer-in-house-within", 2])
        runner.run(["eval", "report", "--out", settings.workdir / "report"])
        runner.console.print(f"report: [bold]{settings.workdir / 'report' / 'index.html'}[/bold]")

    if settings.private and settings.adapter_dir:
        private.show_route(runner, figures, settings.workdir / "routes.toml", gateway_url, KEY_ENV)

    with runner.section("traffic: self_sufficient = true (in-house models only)"):
        result = _burst(ports["gateway_ss"], settings, drill=None, key_env=KEY_ENVS["gateway_ss"])
        _print_burst(runner, "self_sufficient", result)
        summary["self_sufficient"] = _burst_summary(result)
        summary["partner_request"] = _ask_partner(runner, ports)
        summary["tools_and_json"] = tools_and_json(runner, ports["gateway_ss"], KEY_ENVS["gateway_ss"])

    with runner.section("outage drill: a model server dies mid-burst"):
        result = _burst(ports["gateway"], settings, drill=runner)
        _print_burst(runner, "drill", result)
        summary["drill"] = _burst_summary(result)

    with runner.section("usage: spend and tokens by team and model, in-house share"):
        for name in KEY_ENVS:
            runner.run(["usage", "--by", "team,model", "--since", "1h", "--config", settings.workdir / f"{name}.toml"])
    return summary


def _ask_partner(runner: DemoRunner, ports: dict[str, int]) -> dict[str, int]:
    """The same request for the partner's model through both gateways: policy, not luck, keeps it in house."""
    statuses = {}
    for name in ("gateway", "gateway_ss"):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{ports[name]}/v1", api_key=os.environ[KEY_ENVS[name]],
                               max_retries=0, timeout=300)
        try:
            client.chat.completions.create(model="partner-mini", max_tokens=8,
                                           messages=[{"role": "user", "content": "Hello"}])
            statuses[name] = 200
            outcome = "served by partner-sim"
        except openai.APIStatusError as exc:
            statuses[name] = exc.status_code
            outcome = f"{exc.status_code}: {exc.message}"
        label = "self_sufficient = true " if name == "gateway_ss" else "self_sufficient = false"
        runner.console.print(f"{label}  model=partner-mini → {outcome}", markup=False, highlight=False)
    return statuses


def _first_requests(runner: DemoRunner, ports: dict[str, int]) -> None:
    table = Table("model", "prompt", "answer", "TTFT ms", "tokens/s")
    # The in-house model is a base model of Python source: a completion, sampled (greedy loops on "#").
    cases = [("nano-demo", ports["nano"], "def read_config(path):\n", False, 0.7),
             ("smollm2", ports["smollm2"], "What is the capital of France?", True, 0.0),
             ("smollm2", ports["smollm2"], "Name three uses of a spreadsheet.", True, 0.0)]
    for model, port, prompt, chat, temperature in cases:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=300)
        timing = timed_chat(client, model, prompt, max_tokens=48, chat=chat, temperature=temperature)
        answer = "\n".join(timing.text.strip().splitlines()[:6])
        table.add_row(model, prompt.strip(), answer, f"{1000 * timing.ttft_s:.0f}", f"{timing.tokens_per_s:.1f}")
    runner.console.print(table)


def _burst(port: int, settings: OperateSettings, drill: DemoRunner | None, key_env: str = KEY_ENV) -> BurstReport:
    """A burst of product traffic; with a drill, the busiest model's server is killed a third of the way in."""
    state = {"killed": None}

    def pull_the_plug(done: int, result: BurstReport) -> None:
        if drill is None or state["killed"] or done < settings.burst_requests // 3:
            return
        busiest = result.served_by.most_common(1)[0][0].split("@")[0] if result.served_by else "nano-demo"
        server = "serve-smollm2" if busiest == "smollm2" else "serve-nano"
        drill.kill_server(server)
        state["killed"] = server
        drill.console.print(f"[bold red]killed {server} (serving {busiest}) after {done} requests[/bold red]")

    return asyncio.run(burst(f"http://127.0.0.1:{port}", settings.burst_requests, settings.burst_concurrency,
                             key=os.environ[key_env], tasks=TASKS, max_tokens=16, on_progress=pull_the_plug))


def _print_burst(runner: DemoRunner, label: str, result: BurstReport) -> None:
    table = Table(title=f"{label}: {result.ok}/{result.sent} served, {result.failed} failed, "
                        f"{result.failovers} failovers, p50 {result.p50_ms():.0f} ms")
    table.add_column("served by (model@provider)")
    table.add_column("requests", justify="right")
    for who, count in result.served_by.most_common():
        table.add_row(who, str(count))
    runner.console.print(table)
    if result.errors:
        runner.console.print(f"errors: {dict(result.errors)}")


def _burst_summary(result: BurstReport) -> dict:
    return {"sent": result.sent, "served": result.ok, "failed": result.failed, "failovers": result.failovers,
            "served_by": dict(result.served_by), "p50_ms": result.p50_ms()}


def write_gateway_config(path: Path, ports: dict[str, int], self_sufficient: bool, adapter: bool = False) -> Path:
    """The demo's gateway: our two servers, plus a simulated partner (the SmolLM2 server again, labelled as a
    priced, out-of-house provider) so that policy and fallback have something to exclude or fall back to. With
    `adapter`, the private LoRA adapter (served by the SmolLM2 engine) is a model and a spreadsheet candidate."""
    def candidates(task: str) -> str:
        # Before any eval the adapter is just another in-house option; the routing table moves it up on evidence.
        names = ["smollm2", "nano-demo", *([private.ADAPTER] if adapter and task == private.TASK else []), "partner-mini"]
        return ", ".join(f'"{n}"' for n in names)

    extra = (f"\n[models.{private.ADAPTER}]\nprovider = \"open-weights\"\ncontext_window = 2048\n" if adapter else "")
    path.write_text(f"""# Written by `autarky demo`.
routes = "routes.toml"
require_keys = true
store = "sqlite:///{path.parent.parent / ('autarky.db' if not self_sufficient else 'autarky-ss.db')}"

[policy]
self_sufficient = {str(self_sufficient).lower()}

[providers.inhouse]
kind = "openai"
base_url = "http://127.0.0.1:{ports['nano']}/v1"
region = "local"
in_house = true

[providers.open-weights]
kind = "openai"
base_url = "http://127.0.0.1:{ports['smollm2']}/v1"
region = "local"
in_house = true

[providers.partner-sim]   # stands in for a paid partner API: same local server, priced and out of house
kind = "openai"
base_url = "http://127.0.0.1:{ports['smollm2']}/v1"
region = "us"
in_house = false
max_data_class = "internal"

[models.nano-demo]
provider = "inhouse"
context_window = 256

[models.smollm2]
provider = "open-weights"
context_window = 2048

[models.partner-mini]
provider = "partner-sim"
upstream_id = "smollm2"
usd_per_1m_input = 0.15
usd_per_1m_output = 0.60
context_window = 2048
""" + extra + "".join(f'\n[tasks.{task}]\ncandidates = [{candidates(task)}]\n' for task in TASKS))
    return path
