"""`LoraConfig`: what to adapt and how, one pydantic model shared by apply_lora, the PEFT files and the CLI.

Targets are accepted under our module names (wq … w3), Hugging Face/PEFT names (q_proj … down_proj) or
"all-linear" (every projection of every block; like PEFT, never the output head), and are stored as our names
in block order, so two configs that mean the same modules compare equal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Our projection names, in block order, with the LlamaForCausalLM/PEFT name of each.
HF_TARGETS: dict[str, str] = {
    "wq": "q_proj", "wk": "k_proj", "wv": "v_proj", "wo": "o_proj",
    "w1": "gate_proj", "w2": "down_proj", "w3": "up_proj",
}
ALL_LINEAR = "all-linear"
_FROM_HF = {hf: ours for ours, hf in HF_TARGETS.items()}


def our_target(name: str) -> str:
    """`q_proj` or `wq` → `wq`; ValueError naming the accepted names otherwise."""
    if name in HF_TARGETS:
        return name
    if name in _FROM_HF:
        return _FROM_HF[name]
    accepted = ", ".join([*HF_TARGETS, *_FROM_HF, ALL_LINEAR])
    raise ValueError(f"unknown LoRA target module {name!r}; expected one of {accepted}")


class LoraConfig(BaseModel):
    """LoRA hyperparameters. scaling = alpha / rank (alpha / sqrt(rank) with use_rslora)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int = Field(8, gt=0, description="LoRA rank r (the inner dimension of B·A)")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha: the update is scaled by alpha / rank")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter's input while training")
    targets: tuple[str, ...] = Field(tuple(HF_TARGETS), description="modules to adapt: wq…w3, q_proj…down_proj "
                                     "or all-linear")
    use_rslora: bool = Field(False, description="rank-stabilised scaling alpha / sqrt(rank)")
    base_int8: bool = Field(False, description="store the frozen base weights of adapted modules as int8 "
                            "(per output channel), dequantized in forward: QLoRA-style memory saving")

    @field_validator("targets", mode="before")
    @classmethod
    def _our_names(cls, value: object) -> tuple[str, ...]:
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, Sequence) or not names:
            raise ValueError("targets must name at least one module (or all-linear)")
        if ALL_LINEAR in names:
            return tuple(HF_TARGETS)
        wanted = {our_target(str(n)) for n in names}
        return tuple(n for n in HF_TARGETS if n in wanted)

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    @property
    def hf_targets(self) -> list[str]:
        return [HF_TARGETS[n] for n in self.targets]
