"""The plan for people: one Rich renderable with compute, memory, layouts, power, cost and reliability."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from autarky.plan.planner import PlanResult


def _si(value: float, unit: str = "") -> str:
    for factor, prefix in [(1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")]:
        if abs(value) >= factor:
            return f"{value / factor:,.2f}{prefix}{unit}"
    return f"{value:,.0f}{unit}" if float(value).is_integer() else f"{value:,.2f}{unit}"


def _bytes(value_gb: float, unit: str) -> str:
    value = value_gb * (1000 if unit == "MB" else 1)
    return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def _hours(hours: float) -> str:
    if hours < 1:
        return f"{hours * 60:,.1f} min"
    return f"{hours:,.1f} h" if hours < 48 else f"{hours / 24:,.1f} days"


def _mw(value: float | None, unit: str = "MW") -> str:
    if value is None:
        return "[dim]n/a[/dim]"
    return f"{value:,.2f} {unit}" if value < 1000 else f"{value / 1000:,.2f} G{unit[1:]}"


def _facts(title: str, rows: list[tuple[str, str, str]]) -> Table:
    table = Table(title=title, title_style="bold cyan", title_justify="left", show_header=False, box=None,
                  padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column(style="dim")
    for row in rows:
        table.add_row(*row)
    return table


def _memory_table(d: dict[str, Any]) -> Table:
    rows = d["layouts"] or [{"label": d["layout"]["label"], "zero": d["layout"]["zero"],
                             "recompute": d["layout"]["recompute"], "trainer_ready": None,
                             "memory_gb": d["memory_breakdown_gb"]}]
    unit = "MB" if max(r["memory_gb"]["total"] for r in rows) < 1 else "GB"
    first = rows[0]["memory_gb"]
    table = Table(title=f"Memory per GPU, {unit} (HBM {first['capacity']:,.0f} GB, {first['reserve']:g} GB reserved)",
                  title_style="bold cyan", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1),
                  collapse_padding=True, pad_edge=False)
    for col in ("layout", "Z", "rc", "wts", "grad", "opt", "act", "oth", "total", "fit", "run"):
        table.add_column(col, justify="left" if col in ("layout", "rc") else "right", no_wrap=True)
    for i, row in enumerate(rows):
        m = row["memory_gb"]
        fits = "[green]✓[/green]" if m["fits"] else "[red]✗[/red]"
        ready = "[green]✓[/green]" if row.get("trainer_ready") else ""
        style = "bold" if i == 0 and d["layouts"] else None
        values = [m["weights"], m["gradients"], m["optimizer"], m["activations"], m["gathered"] + m["logits"],
                  m["total"]]
        table.add_row(row["label"], str(row["zero"]), row["recompute"][:4], *(_bytes(v, unit) for v in values),
                      fits, ready, style=style)
    table.caption = "Z = ZeRO stage · rc = recompute · wts/grad/opt = weights/gradients/optimizer · act = " \
                    "activations · oth = FSDP-gathered layers + fp32 logits"
    if d["layouts"]:
        table.caption += " · ranked: fits → fewest PP → least recompute → least CP → TP in node · run ✓ = " \
                         "`autarky train` runs it today (FSDP + TP)"
    return table


def render(result: PlanResult) -> RenderableType:
    d = result.to_dict()
    m, hw = d["model"], d["hardware"]
    moe = f" ({_si(m['active_params'])} active, {m['active_experts']}/{m['experts']} experts)" if m["experts"] > 1 else ""
    head = Text.assemble(
        ("autarky plan  ", "bold magenta"), (f"{m['name']}", "bold"), f" · {_si(m['params'])} params{moe} · ",
        (f"{d['gpus']:,} × {hw['name']}", "bold"), f" · {_si(d['tokens'])} tokens")
    compute = _facts("Compute", [
        ("tokens", _si(d["tokens"]), d["tokens_rule"]),
        ("total FLOPs", f"{d['total_flops']:.3e}", f"rule {d['flops_rule']['name']}: {d['flops_rule']['why']}"),
        ("  6ND / with attention", f"{d['flops_6nd']:.2e} / {d['flops_with_attention']:.2e}", ""),
        ("peak per GPU", f"{hw['peak_tflops']:,.1f} TFLOP/s", f"dense {hw['precision'].upper()}; {hw['source']}"),
        ("MFU", f"{d['mfu']:.1%}", d["mfu_source"]),
        ("GPU-hours", _si(d["gpu_hours"]), f"{_si(d['gpu_hours_compute'])} pure compute ÷ goodput {d['goodput']:.1%}"),
        ("wall-clock", f"{d['days']:,.1f} days", f"{d['days_compute']:,.1f} days of pure compute"),
        ("steps", f"{d['steps']:,}", f"{_si(d['tokens_per_step'])} tokens/step, {d['step_time_s']:.3g} s/step"),
    ] + ([("predicted loss", f"{d['predicted_loss']['value']:.3f}", d["predicted_loss"]["label"])]
         if d["predicted_loss"] else []))
    lay = d["layout"]
    layout_line = Text.assemble(("Chosen layout ", "bold cyan"), (lay["label"], "bold"),
                                f" · ZeRO-{lay['zero']} · recompute {lay['recompute']} · micro-batch "
                                f"{lay['micro_batch']} · FlashAttention {'on' if lay['flash_attention'] else 'off'}")
    pw, en = d["power_mw"], d["energy_mwh_tiers"]
    energy = _facts("Power (nameplate) and energy (at {:.0%} load)".format(d["power_load"]), [
        ("GPU only (TDP)", _mw(pw["gpu"]), f"energy {_mw(en['gpu'], 'MWh')}"),
        ("server (GPU + host)", _mw(pw["server"]), f"energy {_mw(en['server'], 'MWh')}"),
        ("facility", _mw(pw["facility"]), f"+{d['network_share']:.0%} network/storage, PUE {d['pue']:g}; "
                                          f"energy {_mw(en['facility'], 'MWh')}"),
    ])
    cost = _facts("Cost", [
        ("GPU time", f"${_si(d['usd_breakdown']['gpu_time'])}", f"at ${d['usd_per_gpu_hour']:g}/GPU-hour"),
        ("electricity", f"${_si(d['usd_breakdown']['electricity'])}", f"at ${d['usd_per_kwh']:g}/kWh of facility energy"),
        ("total", f"${_si(d['usd'])}", ""),
    ])
    rel = _facts("Reliability", [
        ("MTBF per GPU", f"{_si(d['mtbf_gpu_hours'])} GPU-h", d["mtbf_source"]),
        ("job MTBF", _hours(d["job_mtbf_hours"]), f"{d['gpus']:,} GPU{'s' if d['gpus'] > 1 else ''}"),
        ("expected interruptions", f"{d['interruptions']:,.0f}", "over the wall-clock run"),
        ("checkpoint every", _hours(d["checkpoint_interval_min"] / 60),
         f"Daly; Young {_hours(d['checkpoint_interval_young_min'] / 60)}; write {d['checkpoint_write_min']:g} min, "
         f"restart {d['restart_min']:g} min; ≈ every {d['checkpoint_every_steps']:,} steps"),
        ("goodput", f"{d['goodput']:.1%}", d["goodput_source"]),
    ])
    parts: list[RenderableType] = [compute, Text(""), layout_line, _memory_table(d), energy, Text(""), cost,
                                   Text(""), rel]
    if d["notes"]:
        parts += [Text(""), Text("\n".join(f"• {n}" for n in d["notes"]), style="yellow")]
    return Panel(Group(*parts), title=head, title_align="left", border_style="magenta")


def render_comparison(results: list[PlanResult], labels: list[str] | None = None) -> Table:
    """Several plans side by side, one column each (the demo's own model beside frontier clusters)."""
    labels = labels or [r["model"]["name"] for r in results]
    table = Table(title="Plans side by side", title_style="bold cyan", title_justify="left")
    table.add_column("", style="bold")
    for label in labels:
        table.add_column(label, justify="right")
    rows: list[tuple[str, Any]] = [
        ("parameters", lambda d: _si(d["model"]["params"])),
        ("tokens", lambda d: _si(d["tokens"])),
        ("hardware", lambda d: f"{d['gpus']:,} × {d['hardware']['name']}"),
        ("peak / GPU", lambda d: f"{d['hardware']['peak_tflops']:,.3g} TFLOP/s "
                           f"{'measured' if d['hardware']['name'] == 'local' else d['hardware']['precision']}"),
        ("MFU", lambda d: f"{d['mfu']:.1%}"),
        ("total FLOPs", lambda d: f"{d['total_flops']:.2e}"),
        ("GPU-hours", lambda d: _si(d["gpu_hours"])),
        ("days", lambda d: f"{d['days']:,.2f}"),
        ("layout", lambda d: d["layout"]["label"]),
        ("memory / GPU", lambda d: f"{d['memory_per_gpu_gb']:.1f} GB" if d["memory_per_gpu_gb"] >= 1
         else f"{d['memory_per_gpu_gb'] * 1000:.1f} MB"),
        ("power GPU / facility", lambda d: f"{_mw(d['power_mw']['gpu'])} / {_mw(d['power_mw']['facility'])}"),
        ("energy (facility)", lambda d: _mw(d["energy_mwh"], "MWh")),
        ("cost", lambda d: f"${_si(d['usd'])}"),
        ("interruptions", lambda d: f"{d['interruptions']:,.1f}"),
        ("checkpoint every", lambda d: _hours(d["checkpoint_interval_min"] / 60)),
        ("goodput", lambda d: f"{d['goodput']:.1%}"),
    ]
    for name, cell in rows:
        table.add_row(name, *(cell(r.to_dict()) for r in results))
    return table
