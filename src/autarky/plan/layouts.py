"""Parallel layouts: checking one the user gave, and searching the feasible ones for a cluster.

Ranking (best first): fits in HBM (with the reserve) → fewest pipeline stages → least recompute → least
context parallelism → tensor parallel kept inside a node → runnable by `autarky train` today (FSDP + TP only)
→ lowest ZeRO stage (less communication) → least memory. Communication time is not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from autarky.errors import UserError
from autarky.plan.memory import Layout, MemoryBreakdown, MemorySettings, memory_per_gpu
from autarky.plan.shape import ModelShape

RECOMPUTE_ORDER = {"none": 0, "selective": 1, "full": 2}


def check_layout(shape: ModelShape, layout: Layout, gpus: int) -> None:
    """One-line UserErrors for a layout that cannot run this model on this many GPUs."""
    for name, value in [("tp", layout.tp), ("pp", layout.pp), ("dp", layout.dp), ("cp", layout.cp),
                        ("ep", layout.ep)]:
        if value < 1:
            raise UserError(f"--{name} must be a positive integer, got {value}")
    model_parallel = layout.tp * layout.pp * layout.cp
    if gpus % model_parallel:
        raise UserError(f"TP×PP×CP = {model_parallel} does not divide --gpus {gpus}; pick degrees whose product does")
    if layout.gpus != gpus:
        raise UserError(f"TP×PP×CP×DP = {layout.gpus} but --gpus is {gpus}; set --dp {gpus // model_parallel} "
                        "or leave --dp out")
    if shape.heads % layout.tp:
        raise UserError(f"{shape.heads} attention heads are not divisible by --tp {layout.tp}")
    if shape.kv_heads % layout.tp:
        raise UserError(f"{shape.kv_heads} key/value heads are not divisible by --tp {layout.tp}")
    if layout.pp > shape.layers:
        raise UserError(f"--pp {layout.pp} exceeds the model's {shape.layers} layers")
    if shape.seq_len % layout.cp:
        raise UserError(f"sequence length {shape.seq_len} is not divisible by --cp {layout.cp}")
    if layout.ep > 1 and not shape.is_moe:
        raise UserError("--ep needs a mixture-of-experts model (--experts E --active-experts K)")
    if layout.ep > 1 and (shape.experts % layout.ep or (layout.dp * layout.cp) % layout.ep):
        raise UserError(f"--ep {layout.ep} must divide the experts ({shape.experts}) and DP×CP "
                        f"({layout.dp * layout.cp})")


def resolve_layout(shape: ModelShape, gpus: int, tp: int, pp: int, cp: int, ep: int, dp: int | None) -> Layout:
    """The user's layout, with DP filled in from the GPU count when not given."""
    if tp < 1 or pp < 1 or cp < 1 or ep < 1:
        raise UserError("--tp, --pp, --cp and --ep must be positive integers")
    if dp is None:
        if gpus % (tp * pp * cp):
            raise UserError(f"TP×PP×CP = {tp * pp * cp} does not divide --gpus {gpus}; pick degrees whose "
                            "product does")
        dp = gpus // (tp * pp * cp)
    layout = Layout(tp=tp, pp=pp, dp=dp, cp=cp, ep=ep)
    check_layout(shape, layout, gpus)
    return layout


@dataclass(frozen=True)
class LayoutCandidate:
    layout: Layout
    settings: MemorySettings
    memory: MemoryBreakdown
    trainer_ready: bool  # `autarky train` runs it today: FSDP/ZeRO-3 + TP, no PP/CP/EP

    def rank_key(self) -> tuple:
        return (not self.memory.fits, self.layout.pp, RECOMPUTE_ORDER[self.settings.recompute], self.layout.cp,
                self.layout.tp > 8, not self.trainer_ready, self.settings.zero, self.memory.total)


def _powers_of_two(limit: int) -> list[int]:
    out, v = [], 1
    while v <= limit:
        out.append(v)
        v *= 2
    return out


def find_layouts(shape: ModelShape, gpus: int, base: MemorySettings, capacity_gb: float,
                 gpus_per_node: int = 8, limit: int = 10) -> list[LayoutCandidate]:
    """Every feasible (TP, PP, CP, DP[, EP]), each with its best ZeRO stage and recompute, ranked; top `limit`."""
    found: list[LayoutCandidate] = []
    for tp in _powers_of_two(min(gpus_per_node, gpus)):
        for pp in _powers_of_two(min(shape.layers, gpus // tp)):
            for cp in _powers_of_two(min(16, gpus // (tp * pp))):
                if gpus % (tp * pp * cp):
                    continue
                dp = gpus // (tp * pp * cp)
                eps = [e for e in _powers_of_two(shape.experts) if (dp * cp) % e == 0 and shape.experts % e == 0] \
                    if shape.is_moe else [1]
                for ep in eps[-1:]:  # widest expert parallelism that divides: experts memory is the point
                    layout = Layout(tp=tp, pp=pp, dp=dp, cp=cp, ep=ep)
                    try:
                        check_layout(shape, layout, gpus)
                    except UserError:
                        continue
                    for zero in (1, 2, 3):
                        for recompute in ("none", "selective", "full"):
                            settings = replace(base, zero=zero, recompute=recompute)
                            memory = memory_per_gpu(shape, layout, settings, capacity_gb)
                            ready = pp == 1 and cp == 1 and ep == 1 and zero == 3
                            found.append(LayoutCandidate(layout, settings, memory, ready))
    # One row per layout: its best ZeRO stage and recompute setting.
    best: dict[Layout, LayoutCandidate] = {}
    for cand in sorted(found, key=LayoutCandidate.rank_key):
        best.setdefault(cand.layout, cand)
    return list(best.values())[:limit]
