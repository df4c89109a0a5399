"""The accelerator catalog: dense peaks, HBM, power per GPU and per server share, with sources.

Every peak is dense (never the 2:4-sparse headline). Figures come from /work/shared/reference/planner.md §2.
Users add or override entries with a TOML file (`--hardware-file`), one table per accelerator:

    [my-gpu]
    bf16_tflops = 1000
    fp8_tflops = 2000
    hbm_gb = 96
    tdp_w = 800
    server_w_per_gpu = 1400

A run on this machine becomes an entry too (`local_accelerator`), built from the peak it recorded.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from autarky.errors import UserError

Precision = Literal["bf16", "fp8"]


class Accelerator(BaseModel):
    """One accelerator as the planner sees it. Power figures are nameplate (TDP / server max)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    bf16_tflops: float = Field(gt=0, description="dense BF16 peak, TFLOP/s")
    fp8_tflops: float | None = Field(default=None, gt=0, description="dense FP8 peak, TFLOP/s; None if none")
    hbm_gb: float = Field(gt=0, description="memory per device, GB (vendor nominal)")
    hbm_tbps: float | None = Field(default=None, gt=0)
    link_gbps: float | None = Field(default=None, gt=0, description="scale-up link per GPU, GB/s bidirectional")
    tdp_w: float | None = Field(default=None, gt=0, description="GPU board power, W")
    server_w_per_gpu: float | None = Field(
        default=None, gt=0, description="server max power / GPUs per server, W (GPU + CPU, NIC, fans, PSU)")
    gpus_per_node: int = Field(default=8, gt=0)
    source: str = "user hardware file"

    @model_validator(mode="after")
    def _server_covers_gpu(self) -> Accelerator:
        if self.tdp_w is not None and self.server_w_per_gpu is not None and self.server_w_per_gpu < self.tdp_w:
            raise ValueError(f"server_w_per_gpu ({self.server_w_per_gpu}) is below tdp_w ({self.tdp_w})")
        return self

    def peak_flops(self, precision: Precision) -> float:
        """Dense peak in FLOP/s for the precision; FP8 on a part without FP8 is a user error."""
        if precision == "fp8":
            if self.fp8_tflops is None:
                raise UserError(f"{self.name} has no FP8 peak; use --precision bf16")
            return self.fp8_tflops * 1e12
        return self.bf16_tflops * 1e12


def _a(name: str, **kw: object) -> Accelerator:
    return Accelerator(name=name, **kw)


# Server share per GPU = DGX max system power / 8 where NVIDIA publishes one (planner.md §2.2).
CATALOG: dict[str, Accelerator] = {a.name: a for a in [
    _a("a100-80gb", bf16_tflops=312, hbm_gb=80, hbm_tbps=2.039, link_gbps=600, tdp_w=400, server_w_per_gpu=812.5,
       source="NVIDIA A100 datasheet; DGX A100 6.5 kW / 8"),
    _a("h100", bf16_tflops=989.4, fp8_tflops=1978.9, hbm_gb=80, hbm_tbps=3.35, link_gbps=900, tdp_w=700,
       server_w_per_gpu=1275, source="NVIDIA H100 SXM5 whitepaper; DGX H100 10.2 kW / 8"),
    _a("h200", bf16_tflops=989.4, fp8_tflops=1978.9, hbm_gb=141, hbm_tbps=4.8, link_gbps=900, tdp_w=700,
       server_w_per_gpu=1275, source="NVIDIA H200 page; DGX H200 10.2 kW / 8"),
    _a("b200", bf16_tflops=2250, fp8_tflops=4500, hbm_gb=180, hbm_tbps=8.0, link_gbps=1800, tdp_w=1000,
       server_w_per_gpu=1787.5, source="DGX B200 user guide (14.3 kW / 8); 1,000 W config"),
    _a("gb200", bf16_tflops=2500, fp8_tflops=5000, hbm_gb=186, hbm_tbps=8.0, link_gbps=1800, tdp_w=1200,
       server_w_per_gpu=1750, gpus_per_node=72,
       source="NVIDIA GB200 NVL72 page; ~120-132 kW per 72-GPU rack (reported)"),
    _a("mi300x", bf16_tflops=1307.4, fp8_tflops=2614.9, hbm_gb=192, hbm_tbps=5.3, link_gbps=896, tdp_w=750,
       server_w_per_gpu=1350,
       source="AMD MI300X datasheet; server share assumed 1.8x TDP (no primary server figure)"),
    _a("h800", bf16_tflops=989.4, fp8_tflops=1978.9, hbm_gb=80, hbm_tbps=3.35, link_gbps=400, tdp_w=700,
       server_w_per_gpu=1275, source="as H100 with cut NVLink (DeepSeek-V3, arXiv:2412.19437)"),
    _a("v100", bf16_tflops=125, hbm_gb=32, hbm_tbps=0.9, link_gbps=300, tdp_w=300,
       source="NVIDIA V100 datasheet (FP16 tensor peak; validation only)"),
    _a("tpu-v4", bf16_tflops=275, hbm_gb=32, hbm_tbps=1.2, gpus_per_node=4,
       source="PaLM App. B (275 TFLOP/s); no power figure"),
]}

ALIASES = {"a100": "a100-80gb", "h100-sxm": "h100", "tpuv4": "tpu-v4"}


def load_hardware_file(path: Path) -> dict[str, Accelerator]:
    """Accelerators from a TOML file, one table per name; errors name the entry and the field."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"hardware file {path} does not exist; pass a TOML file with one table per GPU") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"cannot read hardware file {path}: {exc}") from None
    found: dict[str, Accelerator] = {}
    for name, table in raw.items():
        if not isinstance(table, dict):
            raise UserError(f"hardware file {path}: {name!r} must be a table like [{name}] with bf16_tflops, hbm_gb")
        try:
            found[name.lower()] = Accelerator(name=name.lower(), **table)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "entry"
            raise UserError(f"hardware file {path}: [{name}] field {field!r}: {err['msg']}") from None
    return found


def find_accelerator(name: str, extra: dict[str, Accelerator] | None = None) -> Accelerator:
    """The named accelerator from the user's file first, then the catalog; unknown names list the known ones."""
    known = {**CATALOG, **(extra or {})}
    key = ALIASES.get(name.lower(), name.lower())
    if key not in known:
        raise UserError(f"unknown GPU {name!r}; known: {', '.join(sorted(known))} (add one with --hardware-file)")
    return known[key]


def local_accelerator(peak_flops: float, device: str) -> Accelerator:
    """'This machine' as an accelerator, from the peak FLOP/s a training run recorded for its device."""
    if not peak_flops > 0:
        raise UserError(f"the run recorded peak_flops={peak_flops}; cannot plan on this machine without it")
    memory_gb = _physical_memory_gb()
    for entry in CATALOG.values():  # a CUDA run names its part, e.g. "NVIDIA H100 80GB HBM3"
        if entry.name.split("-")[0] in device.lower().replace(" ", ""):
            memory_gb = entry.hbm_gb
    return Accelerator(name="local", bf16_tflops=peak_flops / 1e12, hbm_gb=memory_gb, gpus_per_node=1,
                       source=f"measured run on {device} (peak_flops={peak_flops:.3g} FLOP/s as recorded)")


def _physical_memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 16.0
