"""Many LoRA adapters served over one copy of a base model, in one continuous batch (S-LoRA / Punica style).

Each projection of each block (wq … w3) is wrapped from outside in a `MultiLoraLinear` holding every loaded
adapter's weights stacked by slot: A (slots, max_rank, in), B (slots, out, max_rank), slot 0 the zero "no adapter"
slot. Before each forward the engine hands the step's per-row adapters to the model's `LoraRows`, which groups the
rows by adapter once per step; every wrapped projection then computes

    y = base(x);  y[rows of adapter a] += (x[rows] · A[a]ᵀ · B[a]ᵀ) · scaling[a]      (per group, fp32 update)

the same operations, in the same order and precision, as `autarky.adapters.LoraLinear` on that row alone, so a
request's output does not depend on what it is batched with. Base rows add nothing and a step without adapter rows
costs one Python check per projection. The fused decode blocks (decode_kernels.DecodeBlock) read the projections
inside compiled graphs, so they decline the steps whose rows carry adapters (`LoraRows.active`).

Slots are recycled only once no request can read them: a request holds its `LoraAdapter` handle, and an unloaded
adapter's slot stays taken until the last handle is gone (weak references).
"""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from autarky.adapters.config import HF_TARGETS
from autarky.adapters.lora import clean_name
from autarky.adapters.peft_format import read_adapter, read_adapter_config
from autarky.errors import UserError
from autarky.serve.decode_kernels import DecodeBlock
from autarky.serve.options import DEFAULTS

DEFAULT_MAX_LORAS = DEFAULTS.max_loras
DEFAULT_MAX_LORA_RANK = DEFAULTS.max_lora_rank


@dataclass(eq=False)
class LoraAdapter:
    """A loaded adapter: its served name, folder, stacked slot, rank and scaling (alpha / r)."""

    name: str
    path: str
    slot: int
    rank: int
    scaling: float


@dataclass(frozen=True)
class _Group:
    slot: int
    rank: int
    scaling: float
    rows: torch.Tensor | None  # the batch rows of this adapter; None = every row


class LoraRows:
    """The current step's rows grouped by adapter, shared by every MultiLoraLinear of one model."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.groups: tuple[_Group, ...] = ()

    @property
    def active(self) -> bool:
        """Whether any row of this step carries an adapter."""
        return bool(self.groups)

    def set_rows(self, adapters: Sequence[LoraAdapter | None] | None) -> None:
        """Row b of the next forward uses adapters[b] (None: the base alone)."""
        by_adapter: dict[LoraAdapter, list[int]] = {}
        for row, adapter in enumerate(adapters or ()):
            if adapter is not None:
                by_adapter.setdefault(adapter, []).append(row)
        groups = []
        for adapter, rows in by_adapter.items():
            index = None if len(rows) == len(adapters or ()) else torch.tensor(rows, device=self.device)
            groups.append(_Group(adapter.slot, adapter.rank, adapter.scaling, index))
        self.groups = tuple(groups)


class MultiLoraLinear(nn.Module):
    """A served projection plus every loaded adapter's update for it, selected per batch row."""

    def __init__(self, base: nn.Module, rows: LoraRows, slots: int, max_rank: int) -> None:
        super().__init__()
        self.base, self.rows = base, rows
        self.in_features, self.out_features = base.in_features, base.out_features
        device = rows.device
        # fp32 as LoraLinear holds them (promote_types(base dtype, fp32)); slot 0 stays zero.
        self.register_buffer("lora_A", torch.zeros(slots, max_rank, self.in_features, device=device))
        self.register_buffer("lora_B", torch.zeros(slots, self.out_features, max_rank, device=device))
        self.adapted = [False] * slots  # whether the adapter in each slot adapts this projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        groups = self.rows.groups
        if not groups:
            return out
        for g in groups:
            if not self.adapted[g.slot]:
                continue
            h = x if g.rows is None else x.index_select(0, g.rows)
            update = F.linear(F.linear(h.to(self.lora_A.dtype), self.lora_A[g.slot, : g.rank]),
                              self.lora_B[g.slot, :, : g.rank])
            update = (update * g.scaling).to(out.dtype)
            out = out + update if g.rows is None else out.index_add(0, g.rows, update)
        return out

    def set_slot(self, slot: int, a: torch.Tensor | None, b: torch.Tensor | None) -> None:
        """Put an adapter's A (r, in) and B (out, r) into `slot` (zeros when it does not adapt this projection)."""
        with torch.no_grad():
            self.lora_A[slot].zero_()
            self.lora_B[slot].zero_()
            if a is not None and b is not None:
                self.lora_A[slot, : a.shape[0]].copy_(a)
                self.lora_B[slot, :, : b.shape[1]].copy_(b)
        self.adapted[slot] = a is not None


def wrap_projections(model: nn.Module, rows: LoraRows, slots: int, max_rank: int) -> dict[str, MultiLoraLinear]:
    """Wrap every block projection (whatever serving made of it: fp, int8, packed) in a MultiLoraLinear, in place;
    returns them by plain-model name ('layers.0.attention.wq', …)."""
    wrapped = {}
    for parent_name, parent in list(model.named_modules()):
        for attr, child in list(parent.named_children()):
            if attr in HF_TARGETS and not isinstance(child, MultiLoraLinear):
                module = MultiLoraLinear(child, rows, slots, max_rank)
                setattr(parent, attr, module)
                wrapped[clean_name(f"{parent_name}.{attr}" if parent_name else attr)] = module
    return wrapped


class LoraManager:
    """The adapters served over one base model: loading (validated against the base), unloading, slots."""

    def __init__(self, model: nn.Module, *, max_loras: int = DEFAULT_MAX_LORAS,
                 max_lora_rank: int = DEFAULT_MAX_LORA_RANK, runtime_updates: bool = False) -> None:  # fmt: skip
        if max_loras < 1 or max_lora_rank < 1:
            raise UserError("--max-loras and --max-lora-rank must be at least 1")
        self.max_loras, self.max_lora_rank, self.runtime_updates = max_loras, max_lora_rank, runtime_updates
        self.rows = LoraRows(next(model.parameters()).device)
        self.modules = wrap_projections(model, self.rows, max_loras + 1, max_lora_rank)
        for block in model.modules():
            if isinstance(block, DecodeBlock):
                block.lora = self.rows
        self.loaded: dict[str, LoraAdapter] = {}
        self._retired: list[weakref.ref[LoraAdapter]] = []  # unloaded, maybe still read by requests in flight
        self._lock = threading.Lock()

    def set_rows(self, adapters: Sequence[LoraAdapter | None] | None) -> None:
        self.rows.set_rows(adapters)

    def load(self, name: str, path: str | Path) -> LoraAdapter:
        """Read and validate a PEFT adapter folder and put it into a free slot. UserError says what is wrong."""
        if name in self.loaded:
            raise UserError(f"the LoRA adapter {name!r} is already loaded; unload it first")
        cfg, tensors = read_adapter(Path(path))
        if cfg.rank > self.max_lora_rank:
            raise UserError(f"{path}: LoRA rank {cfg.rank} is above this server's --max-lora-rank "
                            f"{self.max_lora_rank}")
        for module_name, pair in tensors.items():
            self._check(Path(path), module_name, pair, cfg.rank)
        with self._lock:
            if name in self.loaded:
                raise UserError(f"the LoRA adapter {name!r} is already loaded; unload it first")
            slot = self._free_slot()
            for module_name, module in self.modules.items():
                pair = tensors.get(module_name)
                module.set_slot(slot, *((pair["A"], pair["B"]) if pair else (None, None)))
            adapter = LoraAdapter(name, str(path), slot, cfg.rank, cfg.scaling)
            self.loaded[name] = adapter
        return adapter

    def unload(self, name: str) -> LoraAdapter:
        """Stop serving `name`; requests already running finish with it. KeyError if it is not loaded."""
        with self._lock:
            adapter = self.loaded.pop(name)
            self._retired.append(weakref.ref(adapter))
        return adapter

    def _free_slot(self) -> int:
        if len(self.loaded) >= self.max_loras:
            raise UserError(f"too many LoRA adapters: this server holds at most {self.max_loras} (--max-loras); "
                            "unload one first")
        for _ in range(2):
            self._retired = [ref for ref in self._retired if ref() is not None]
            busy = {a.slot for a in self.loaded.values()} | {a.slot for ref in self._retired if (a := ref())}
            free = [slot for slot in range(1, self.max_loras + 1) if slot not in busy]
            if free:
                return free[0]
            gc.collect()  # a finished request in a reference cycle may still hold a handle
        raise UserError("every LoRA slot is held by an unloaded adapter whose requests are still running; retry "
                        "once they finish")

    def _check(self, path: Path, module_name: str, pair: dict[str, torch.Tensor], rank: int) -> None:
        module = self.modules.get(module_name)
        if module is None:
            raise UserError(f"{path}: the adapter adapts {module_name}, which the base model does not have "
                            "(an adapter for another base?)")
        if pair.keys() != {"A", "B"}:
            raise UserError(f"{path}: {module_name} has lora_{'A' if 'A' not in pair else 'B'} missing")
        want = {"A": (rank, module.in_features), "B": (module.out_features, rank)}
        for which, shape in want.items():
            if tuple(pair[which].shape) != shape:
                raise UserError(f"{path}: {module_name}.lora_{which} has shape {tuple(pair[which].shape)}, but the "
                                f"base model needs {shape} (an adapter for another base?)")


def parse_lora_arg(arg: str, max_lora_rank: int = DEFAULT_MAX_LORA_RANK) -> tuple[str, str]:
    """`NAME=PATH` of `--lora` → (name, path), with the folder's config checked up front (UserError otherwise)."""
    name, sep, path = arg.partition("=")
    if not sep or not name or not path or "/" in name:
        raise UserError(f"--lora wants NAME=PATH (a PEFT adapter folder), got {arg!r}")
    if not Path(path).is_dir():
        raise UserError(f"--lora {name}: {path} is not a folder")
    rank = int(read_adapter_config(Path(path)).get("r", 8))
    if rank > max_lora_rank:
        raise UserError(f"--lora {name}: rank {rank} is above --max-lora-rank {max_lora_rank}")
    return name, path
