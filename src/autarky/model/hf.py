"""To and from Hugging Face folders: config.json, model.safetensors, tokenizer, generation config.

Our Llama uses HF's rotate-half RoPE and the same weight layout, so conversion is a rename. Loading accepts the
families our model implements (FAMILIES: Llama 2/3.x and SmolLM2, Mistral, Qwen2/2.5, Qwen3, and the MoEs of
autarky.model.hf_moe), each read the way its transformers class reads config.json, and refuses any other feature
with a UserError naming the field instead of producing wrong logits. Export writes the family's own `architectures`/`model_type` and fields back.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from autarky.errors import UserError
from autarky.model import hf_moe
from autarky.model.chat import CHAT_TEMPLATE, ENDOFTEXT, IM_END
from autarky.model.config import FAMILIES, ModelConfig, RopeScaling
from autarky.model.llama import Llama
from autarky.model.rope import rope_tables

# The eos tokens of ChatML-style tokenizers (ours and SmolLM2): end of document and end of chat turn.
EOS_TOKENS = (ENDOFTEXT, IM_END)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")

_BLOCK_NAMES = {
    "attention.wq": "self_attn.q_proj",
    "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj",
    "attention.q_norm": "self_attn.q_norm",
    "attention.k_norm": "self_attn.k_norm",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj",
    "feed_forward.router": "mlp.gate",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"tok_embeddings": "model.embed_tokens", "norm": "model.norm", "output": "lm_head"}


def to_hf_name(name: str) -> str:
    """Our parameter name → the LlamaForCausalLM one, e.g. layers.3.attention.wq.weight → model.layers.3.self_attn.q_proj.weight."""
    stem, leaf = name.rsplit(".", 1)
    if stem.startswith("layers."):
        _, index, module = stem.split(".", 2)
        return f"model.layers.{index}.{_BLOCK_NAMES[module]}.{leaf}"
    return f"{_TOP_NAMES[stem]}.{leaf}"


def from_hf_name(name: str) -> str:
    stem, leaf = name.rsplit(".", 1)
    if stem.startswith("model.layers."):
        _, _, index, module = stem.split(".", 3)
        ours = {v: k for k, v in _BLOCK_NAMES.items()}.get(module)
        if ours is None:
            raise UserError(f"unexpected weight {name!r}: not a layer of the supported families ({', '.join(FAMILIES)})")
        return f"layers.{index}.{ours}.{leaf}"
    ours = {v: k for k, v in _TOP_NAMES.items()}.get(stem)
    if ours is None:
        raise UserError(f"unexpected weight {name!r} in the safetensors files: not a weight of the supported families")
    return f"{ours}.{leaf}"


# ---------------------------------------------------------------------------------------------- config


_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM", "mixtral": "MixtralForCausalLM",
                  "dots1": "Dots1ForCausalLM", "glm4_moe": "Glm4MoeForCausalLM"}
_LLAMA3_ROPE = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def hf_config_dict(cfg: ModelConfig, bos_token_id: int | None, eos_token_id: int | list[int] | None,
                   dtype: torch.dtype) -> dict:
    """config.json for `cfg` as its family's transformers class reads it; UserError when the family cannot
    express one of the model's features (e.g. a sliding window written as Llama). A model of our own (family
    "llama") with experts is written as the first MoE family that expresses it."""
    cfg = hf_moe.written_as(cfg)
    dtype_name = str(dtype).removeprefix("torch.")
    rope: dict = {"rope_type": "default"}
    if cfg.rope_scaling is not None:
        rope = {"rope_type": "llama3", **{k: getattr(cfg.rope_scaling, k) for k in _LLAMA3_ROPE}}
    config = {
        "architectures": [_ARCHITECTURES[cfg.family]],
        "model_type": cfg.family,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_dim,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "num_hidden_layers": cfg.n_layers,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_seq_len,
        # transformers 4.x reads rope_theta/rope_scaling, 5.x rope_parameters; both are written.
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None if cfg.rope_scaling is None else rope,
        "rope_parameters": {**rope, "rope_theta": cfg.rope_theta},
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu",
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "torch_dtype": dtype_name,
        "use_cache": True,
    }
    fits = {  # the features each family's class can express, and the fields that say so
        "llama": (cfg.qkv_bias == cfg.wo_bias and not cfg.qk_norm and cfg.sliding_window is None,
                  {"attention_bias": cfg.qkv_bias, "mlp_bias": False}),
        "mistral": (not (cfg.qkv_bias or cfg.wo_bias or cfg.qk_norm), {"sliding_window": cfg.sliding_window}),
        "qwen2": (cfg.qkv_bias and not (cfg.wo_bias or cfg.qk_norm) and cfg.sliding_window is None,
                  {"use_sliding_window": False, "sliding_window": None, "max_window_layers": cfg.n_layers}),
        "qwen3": (cfg.qk_norm and cfg.qkv_bias == cfg.wo_bias and cfg.sliding_window is None,
                  {"attention_bias": cfg.qkv_bias, "use_sliding_window": False, "sliding_window": None,
                   "max_window_layers": cfg.n_layers}),
        **{family: hf_moe.moe_fits(cfg) for family in hf_moe.MOE_FAMILIES},
    }
    ok, fields = fits[cfg.family]
    ok = ok and (cfg.family in hf_moe.MOE_FAMILIES or not cfg.n_experts)
    if not ok:
        features = {k: getattr(cfg, k) for k in ("qkv_bias", "wo_bias", "qk_norm", "sliding_window", "n_experts",
                                                 "n_shared_experts", "score_func", "route_scale")}
        raise UserError(f"a {_ARCHITECTURES[cfg.family]} config.json cannot express this model's {features}")
    return {**config, **fields}


def _family(hf: dict, source: str) -> str:
    model_type = hf.get("model_type")
    architectures = hf.get("architectures") or []
    for family, architecture in _ARCHITECTURES.items():
        if model_type == family or (model_type is None and architecture in architectures):
            return family
    raise UserError(
        f"{source}: model_type {model_type!r} / architectures {architectures} is not a Llama model nor one of the "
        f"families built on it; autarky loads {', '.join(_ARCHITECTURES.values())} folders"
    )


def _rope_scaling(hf: dict, source: str) -> RopeScaling | None:
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if float(rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))) != 1.0:
        raise UserError(f"{source}: partial_rotary_factor is not supported; RoPE must rotate the whole head")
    if rope_type == "default":
        return None
    if rope_type != "llama3":
        raise UserError(f"{source}: rope scaling {rope_type!r} (rope_scaling.rope_type) is not implemented; "
                        "supported: default RoPE and 'llama3'")
    missing = [k for k in _LLAMA3_ROPE if rope.get(k) is None]
    if missing:
        raise UserError(f"{source}: rope scaling 'llama3' lacks rope_scaling field(s) {', '.join(missing)}")
    try:
        return RopeScaling(float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"]),
                           int(rope["original_max_position_embeddings"]))
    except ValueError as bad:
        raise UserError(f"{source}: {bad}") from None


def _features(hf: dict, family: str, source: str) -> dict:
    """The family's own switches, read as its transformers class reads them (other keys are ignored there too)."""
    if hf.get("hidden_act", "silu") != "silu":
        raise UserError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported; only silu (SwiGLU)")
    if family == "llama" and hf.get("mlp_bias"):
        raise UserError(f"{source}: mlp_bias=true is not supported by the autarky Llama")
    layer_types = hf.get("layer_types") or []
    if family in ("qwen2", "qwen3") and (hf.get("use_sliding_window") or "sliding_attention" in layer_types):
        raise UserError(f"{source}: use_sliding_window=true (sliding attention on some layers only) is not "
                        "supported; only Mistral's window on every layer is")
    bias = bool(hf.get("attention_bias", False))
    window = hf.get("sliding_window") if family == "mistral" else None
    if family in hf_moe.MOE_FAMILIES:
        return hf_moe.moe_features(hf, family, source)
    return {
        "llama": {"qkv_bias": bias, "wo_bias": bias},
        "mistral": {"sliding_window": int(window) if window else None},
        "qwen2": {"qkv_bias": True},
        "qwen3": {"qkv_bias": bias, "wo_bias": bias, "qk_norm": True},
    }[family]


def model_config_from_hf(hf: dict, source: str = "config.json") -> ModelConfig:
    """Our ModelConfig from a config.json dict; UserError for anything our model does not implement."""
    family = _family(hf, source)
    try:
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        dim, n_heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        return ModelConfig(
            vocab_size=int(hf["vocab_size"]),
            dim=dim,
            n_layers=int(hf["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
            ffn_dim=int(hf["intermediate_size"]),
            max_seq_len=int(hf.get("max_position_embeddings", 2048)),
            rope_theta=float(rope.get("rope_theta") or hf.get("rope_theta") or 10_000.0),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            head_dim=int(hf.get("head_dim") or dim // n_heads),
            rope_scaling=_rope_scaling(hf, source),
            family=family,
            **_features(hf, family, source),
        )
    except KeyError as missing:
        raise UserError(f"{source}: missing field {missing}; is this a {family} config?") from None
    except (TypeError, ValueError) as bad:
        raise UserError(f"{source}: {bad}") from None


def read_model_config(path: Path) -> ModelConfig:
    """The ModelConfig of the HF folder at `path`."""
    return model_config_from_hf(_read_json(Path(path) / "config.json"), str(Path(path) / "config.json"))


# ---------------------------------------------------------------------------------------------- tokenizer


def _token_content(entry: object) -> str | None:
    if isinstance(entry, dict):
        return entry.get("content")
    return entry if isinstance(entry, str) else None


def _token_ids(tokenizer_json: dict) -> dict[str, int]:
    ids = dict(tokenizer_json.get("model", {}).get("vocab", {}))
    ids.update({t["content"]: t["id"] for t in tokenizer_json.get("added_tokens", [])})
    return ids


def special_token_ids(folder: Path) -> tuple[int | None, list[int]]:
    """(bos id, eos ids) from a folder's tokenizer files: every ChatML end token present, else eos_token."""
    folder = Path(folder)
    ids = _token_ids(_read_json(folder / "tokenizer.json"))
    config_path = folder / "tokenizer_config.json"
    config = _read_json(config_path) if config_path.exists() else {}
    bos = ids.get(_token_content(config.get("bos_token")) or "")
    eos = [ids[t] for t in EOS_TOKENS if t in ids]
    eos_name = _token_content(config.get("eos_token"))
    if eos_name in ids and ids[eos_name] not in eos:
        eos.append(ids[eos_name])
    return bos, eos


def eos_token_ids(folder: Path) -> list[int]:
    """The ids that end generation: generation_config.json's eos_token_id, else the tokenizer's."""
    folder = Path(folder)
    for name in ("generation_config.json", "config.json"):
        if (folder / name).exists():
            value = _read_json(folder / name).get("eos_token_id")
            if value is not None:
                return [value] if isinstance(value, int) else list(value)
    return special_token_ids(folder)[1]


def chat_template(folder: Path) -> str | None:
    """The folder's chat template (tokenizer_config.json, or chat_template.jinja as transformers 5 writes it)."""
    folder = Path(folder)
    config_path = folder / "tokenizer_config.json"
    if config_path.exists():
        template = _read_json(config_path).get("chat_template")
        if isinstance(template, str):
            return template
    jinja = folder / "chat_template.jinja"
    return jinja.read_text() if jinja.exists() else None


def write_tokenizer(tokenizer_dir: Path, out_dir: Path) -> None:
    """Copy the tokenizer files, making sure tokenizer_config.json carries a chat template."""
    tokenizer_dir = Path(tokenizer_dir)
    if not (tokenizer_dir / "tokenizer.json").exists():
        raise UserError(f"{tokenizer_dir} has no tokenizer.json; point at a data dir built by `autarky data build`")
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copy2(tokenizer_dir / name, out_dir / name)
    config_path = tokenizer_dir / "tokenizer_config.json"
    config = _read_json(config_path) if config_path.exists() else {}
    config["chat_template"] = chat_template(tokenizer_dir) or CHAT_TEMPLATE
    config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    _write_json(out_dir / "tokenizer_config.json", config)


# ---------------------------------------------------------------------------------------------- save / load


def hf_state_dict(model: Llama, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The model's weights under transformers' names (the tied output projection left out)."""
    state: dict[str, torch.Tensor] = {}
    cfg = hf_moe.written_as(model.config)
    for name, tensor in model.state_dict().items():
        if hf_moe.is_sparse_weight(name, cfg):
            state.update(hf_moe.sparse_weights(name, tensor, cfg, dtype))
        elif not (cfg.tie_embeddings and name == "output.weight"):
            state[to_hf_name(name)] = tensor.detach().to("cpu", dtype).contiguous()
    return state


def check_output_folder(out_dir: Path) -> Path:
    """`out_dir` if a model folder may be written there (absent or empty): existing models are never replaced."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir} already exists and is not empty; choose another output folder or remove it")
    return out_dir


def save_hf_folder(model: Llama, tokenizer_dir: Path, out_dir: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write `model` + the tokenizer in `tokenizer_dir` as an HF folder at `out_dir`, atomically."""
    out_dir = check_output_folder(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        write_tokenizer(tokenizer_dir, tmp)
        bos, eos = special_token_ids(tmp)
        if any((Path(tokenizer_dir) / name).exists() for name in ("generation_config.json", "config.json")):
            # A model folder as the source (a fine-tuned open model): keep the end ids its generation config
            # declares, e.g. Llama 3 Instruct's <|eot_id|> besides the tokenizer's eos.
            eos += [i for i in eos_token_ids(tokenizer_dir) if i not in eos]
        cfg = model.config
        _write_json(tmp / "config.json", hf_config_dict(cfg, bos, eos[0] if len(eos) == 1 else eos, dtype))
        _write_json(tmp / "generation_config.json", {"bos_token_id": bos, "eos_token_id": eos})
        save_file(hf_state_dict(model, dtype), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is meant to be shared
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(_read_json(index)["weight_map"].values()))
    elif (folder / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise UserError(f"{folder} has no model.safetensors (pickled .bin weights are not loaded for safety)")
    weights: dict[str, torch.Tensor] = {}
    for name in files:
        weights.update(load_file(str(folder / name)))
    return weights


def load_hf_folder(path: Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                   ) -> tuple[Llama, ModelConfig]:
    """Our Llama (eval mode) from an HF folder of one of the supported families."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} is not a Hugging Face model folder (no config.json)")
    cfg = read_model_config(folder)
    weights = _read_weights(folder)
    state = hf_moe.stack_experts(weights, cfg, device, dtype)
    for hf_name, tensor in weights.items():
        if cfg.tie_embeddings and hf_name == "lm_head.weight":
            continue  # some savers write the tied copy too
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue  # a buffer older transformers versions saved
        state[from_hf_name(hf_name)] = tensor.to(device=device, dtype=dtype)
    with torch.device("meta"):
        model = Llama(cfg)
    expected = {n for n in model.state_dict() if not (cfg.tie_embeddings and n == "output.weight")
                and not (n.endswith("expert_bias") and not hf_moe.has_bias(cfg.family))}
    missing, unexpected = expected - state.keys(), state.keys() - expected
    if missing or unexpected:
        hint = " (biases: attention_bias / the family's q/k/v biases)" if any(
            n.endswith(".bias") for n in missing | unexpected) else ""
        raise UserError(f"{folder}: weights do not match config.json (missing {sorted(missing)[:3]}, "
                        f"unexpected {sorted(unexpected)[:3]}){hint}")
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    for name, tensor in state.items():
        if tuple(tensor.shape) != shapes[name]:
            raise UserError(f"{folder}: weight {name} has shape {tuple(tensor.shape)}, config.json implies "
                            f"{shapes[name]} (hidden_size {cfg.dim}, head_dim {cfg.head_dim}, vocab_size "
                            f"{cfg.vocab_size})")
    model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, cfg.rope_scaling)
    model.rope_cos, model.rope_sin = cos.to(device), sin.to(device)  # fp32, as HF computes them
    hf_moe.zero_balancing(model, device)
    return model.eval(), cfg


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing") from None
    except json.JSONDecodeError as bad:
        raise UserError(f"{path} is not valid JSON ({bad})") from None


def _write_json(path: Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
