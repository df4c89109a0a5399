"""The run config: one typed tree (model / optim / schedule / data / parallel / checkpoint / run).

Defaults live here and are tuned for `nano` on the standard-library corpus: 400 steps × 16 × 256 tokens
(1.6M tokens, about one pass over the demo's 5 MB subset) take a few minutes on 2 CPU cores.
`RUN_DIR/config.toml` holds the fully resolved tree, so a run dir alone can be resumed or exported.
"""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autarky.errors import UserError
from autarky.model.config import ModelConfig
from autarky.model.sizes import preset

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    """A preset plus optional explicit overrides; unset fields come from the preset (vocab from the data)."""

    preset: str = Field("nano", description="model preset: nano, micro, small, 1b, 8b, 70b, 405b, moe-nano")
    vocab_size: int | None = Field(None, gt=0)
    dim: int | None = Field(None, gt=0)
    n_layers: int | None = Field(None, gt=0)
    n_heads: int | None = Field(None, gt=0)
    n_kv_heads: int | None = Field(None, gt=0)
    ffn_dim: int | None = Field(None, gt=0)
    max_seq_len: int | None = Field(None, gt=0)
    rope_theta: float | None = Field(None, gt=0)
    norm_eps: float | None = Field(None, gt=0)
    tie_embeddings: bool | None = None
    balance_rate: float | None = Field(None, ge=0, description="MoE: expert_bias step per optimizer step "
                                       "(aux-loss-free balancing); 0 = off")
    aux_loss_coef: float | None = Field(None, ge=0, description="MoE: weight of the auxiliary balance loss; 0 = off")
    z_loss_coef: float | None = Field(None, ge=0, description="MoE: weight of the router z-loss (ST-MoE, "
                                      "logsumexp of the router logits squared); 0 = off")

    def resolve(self, data_vocab: int, seq_len: int) -> ModelConfig:
        """The model shape: the preset, then the data's vocabulary, then explicit fields."""
        base = preset(self.preset)
        if self.vocab_size is not None and self.vocab_size != data_vocab:
            raise UserError(
                f"model.vocab_size is {self.vocab_size} but the data's tokenizer has {data_vocab} tokens; "
                "remove model.vocab_size from the config (it is taken from the data) or use matching data"
            )
        overrides: dict[str, Any] = {"vocab_size": data_vocab, "max_seq_len": max(seq_len, base.max_seq_len)}
        for f in fields(ModelConfig):
            value = getattr(self, f.name, None)
            if value is not None and f.name != "vocab_size":
                overrides[f.name] = value
        if overrides["max_seq_len"] < seq_len:
            raise UserError(f"model.max_seq_len {overrides['max_seq_len']} is below --seq-len {seq_len}")
        try:
            return preset(self.preset, **overrides)
        except ValueError as exc:
            raise UserError(f"invalid model shape: {exc}") from None

    @classmethod
    def pinned(cls, name: str, cfg: ModelConfig) -> ModelSection:
        """The section that reproduces `cfg` exactly (written to RUN_DIR/config.toml); family features (biases,
        q/k norms, head_dim, rope scaling) are the preset's own, so only the shape fields are written."""
        return cls(preset=name, **{k: v for k, v in cfg.to_dict().items() if k in cls.model_fields})


class OptimSection(_Section):
    lr: float = Field(3e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm; 0 disables clipping")


class ScheduleSection(_Section):
    """Linear warmup, then cosine decay to lr * min_lr_ratio at the last step."""

    warmup_steps: int = Field(40, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)


class DataSection(_Section):
    dir: Path | None = Field(None, description="data dir from `autarky data build`")
    batch_size: int = Field(16, gt=0, description="GLOBAL sequences per optimizer step (all ranks, all micro-steps)")
    seq_len: int = Field(256, gt=1, description="tokens per sequence")
    grad_accum: int = Field(1, gt=0, description="micro-steps per optimizer step")
    eval_batches: int = Field(4, gt=0, description="validation = this many global batches of fixed windows")
    order: Literal["random", "sequential"] = Field(
        "random", description="'random' windows, or 'sequential': every token once per epoch, mixture weights honoured"
    )


class ParallelSection(_Section):
    tp: int = Field(1, gt=0, description="tensor-parallel degree; FSDP2 shards over world / tp ranks")
    compile: bool | None = Field(None, description="torch.compile the blocks and the loss; unset: on CUDA only")
    activation_checkpointing: Literal["none", "full", "selective"] = Field(
        "none", description="recompute block activations in backward to save memory: none, full (every block) or "
                            "selective (every other block)")  # fmt: skip


class TrainParallelSection(ParallelSection):
    """Pretraining's parallelism: fine-tuning's plus expert parallelism."""

    ep: int = Field(1, gt=0, description="expert-parallel degree: each group of ep ranks splits every MoE layer's "
                                         "routed experts; divides the world size and the expert count (with "
                                         "--tp, each tp group's ranks split the routed tokens)")


class CheckpointSection(_Section):
    every: int = Field(100, ge=0, description="DCP checkpoint every N steps (0: only at the end/on signal)")
    keep: int = Field(3, gt=0, description="keep the newest K complete checkpoints")
    resume: Literal["never", "auto"] = Field(
        "never", description="'auto': continue from the newest complete checkpoint; 'never': start fresh"
    )


class RunSection(_Section):
    out: Path | None = Field(None, description="run dir to create (or continue with resume = 'auto')")
    steps: int = Field(400, gt=0, description="optimizer steps in total")
    seed: int = Field(1337, ge=0, description="seed of the initial weights and of the training windows drawn")
    eval_every: int = Field(100, ge=0, description="validation every N steps (0: only at the end)")
    log_every: int = Field(10, gt=0)
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto (cuda when available), cpu or cuda")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU")


class TrainConfig(_Section):
    model: ModelSection = ModelSection()
    optim: OptimSection = OptimSection()
    schedule: ScheduleSection = ScheduleSection()
    data: DataSection = DataSection()
    parallel: TrainParallelSection = TrainParallelSection()
    checkpoint: CheckpointSection = CheckpointSection()
    run: RunSection = RunSection()

    def with_overrides(self, overrides: dict[str, Any]) -> TrainConfig:
        """A copy with dotted keys replaced (e.g. {"optim.lr": 1e-3}); None values are ignored."""
        tree = self.model_dump()
        new_preset = overrides.get("model.preset")
        if new_preset is not None and new_preset != self.model.preset:
            tree["model"] = {"preset": new_preset}  # a pinned shape (e.g. another run's config) was for the old one
        return _validated(overridden(tree, overrides), "command-line options")


def overridden(tree: dict, overrides: dict[str, Any]) -> dict:
    """`tree` (a config's model_dump) with dotted keys replaced, e.g. {"optim.lr": 1e-3}; None values ignored."""
    for dotted, value in overrides.items():
        if value is not None:
            section, key = dotted.split(".", 1)
            tree[section][key] = value
    return tree


def load_config(path: Path) -> TrainConfig:
    """Read a run TOML (any subset of sections and keys)."""
    return read_config_file(path, TrainConfig)


def read_config_file(path: Path, model: type[ConfigT]) -> ConfigT:
    """A config tree of `model` from a TOML file (train's and finetune's); every problem one UserError line."""
    try:
        tree = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path} is not valid TOML: {exc}") from None
    return validated(tree, str(path), model)


def validated(tree: dict, origin: str, model: type[ConfigT]) -> ConfigT:
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UserError(f"bad config in {origin}: {where}: {first['msg']}") from None


def _validated(tree: dict, origin: str) -> TrainConfig:
    return validated(tree, origin, TrainConfig)


def dump_config(cfg: TrainConfig) -> str:
    """TOML text of the whole tree (unset optional keys are omitted; TOML has no null)."""
    lines: list[str] = []
    for section, values in cfg.model_dump(mode="json").items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
