"""Single-sequence generation with a pre-allocated KV cache and seeded temperature / top-p sampling.

This is what `autarky sample` uses; the serving engine has its own batched cache but the same sampling
(autarky.model.sampling) and detokenization (autarky.model.tokenizer.IncrementalText). Kept small on purpose.
"""

from __future__ import annotations

from collections.abc import Iterator

import tokenizers
import torch

from autarky.errors import UserError
from autarky.model.llama import Llama
from autarky.model.sampling import SamplingParams, sample_rows
from autarky.model.tokenizer import IncrementalText


class StaticKVCache:
    """Keys and values of every layer for one batch of sequences that advance together, allocated up front.

    Implements `autarky.model.llama.KVCache`: each layer writes its new keys/values at the current length and
    attends to everything up to them; the length advances once the last layer has written.
    """

    def __init__(self, model: Llama, batch_size: int, max_len: int) -> None:
        cfg = model.config
        param = model.tok_embeddings.weight
        shape = (cfg.n_layers, batch_size, max_len, cfg.n_kv_heads, cfg.head_dim)
        self.keys = torch.zeros(shape, dtype=param.dtype, device=param.device)
        self.values = torch.zeros_like(self.keys)
        self.n_layers = cfg.n_layers
        self.max_len = max_len
        self.length = 0  # tokens stored in every layer

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        start, T = self.length, k.shape[1]
        end = start + T
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} tokens; {end} requested")
        self.keys[layer, :, start:end] = k
        self.values[layer, :, start:end] = v
        if layer == self.n_layers - 1:
            self.length = end
        # New token t (at position start + t) attends to every stored position up to its own.
        mask = None
        if start > 0:
            new_pos = torch.arange(start, end, device=k.device).unsqueeze(1)  # (T, 1)
            mask = (torch.arange(end, device=k.device).unsqueeze(0) <= new_pos)[None, None]  # (1, 1, T, S)
        return self.keys[layer, :, :end], self.values[layer, :, :end], mask


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """One token id from next-token logits (V,): greedy at temperature 0, else nucleus sampling. Sampled on the
    CPU so a seed gives the same tokens on every device."""
    return sample_rows(logits.cpu()[None], [SamplingParams(temperature=temperature, top_p=top_p)], [generator])[0]


@torch.inference_mode()
def generate_tokens(
    model: Llama,
    prompt: list[int],
    params: SamplingParams,
    stop_ids: list[int] | tuple[int, ...] = (),
    use_cache: bool = True,
) -> Iterator[int]:
    """Yield generated token ids one at a time, stopping after a stop id (not yielded) or max_tokens."""
    if not prompt:
        raise UserError("the prompt is empty; give at least one token")
    max_len = model.config.max_seq_len
    if len(prompt) >= max_len:
        raise UserError(f"the prompt has {len(prompt)} tokens; this model's context is {max_len}")
    budget = min(params.max_tokens, max_len - len(prompt))
    generator = None if params.seed is None else torch.Generator().manual_seed(params.seed)
    device = model.tok_embeddings.weight.device
    tokens = list(prompt)
    cache = StaticKVCache(model, 1, len(prompt) + budget) if use_cache else None
    step_tokens, step_positions = prompt, torch.arange(len(prompt), device=device)  # prefill, then one at a time
    for _ in range(budget):
        if cache is None:
            logits = model(torch.tensor([tokens], device=device), logits_at=[len(tokens) - 1])[0]
        else:
            logits = model(torch.tensor([step_tokens], device=device), step_positions, cache,
                           logits_at=[len(step_tokens) - 1])[0]
        # Sampled on the CPU so a seed gives the same tokens on every device.
        token = sample_rows(logits.cpu()[None], [params], [generator])[0]
        if token in stop_ids:
            return
        yield token
        tokens.append(token)
        step_tokens, step_positions = [token], torch.tensor([len(tokens) - 1], device=device)


def generate_text(
    model: Llama,
    tokenizer: tokenizers.Tokenizer,
    prompt: str,
    params: SamplingParams,
    stop_ids: list[int] | tuple[int, ...] = (),
) -> Iterator[str]:
    """Yield the generated text in pieces as tokens arrive (complete characters only)."""
    text = IncrementalText(lambda ids: tokenizer.decode(ids, skip_special_tokens=False))
    for token in generate_tokens(model, tokenizer.encode(prompt).ids, params, stop_ids):
        if piece := text.push(token)[0]:
            yield piece
    if rest := text.finish():
        yield rest
