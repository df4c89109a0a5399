"""Sampling parameters and per-row sampling: what `autarky sample` and the serving engine both draw tokens with.

Each sequence owns a torch.Generator and is sampled on its own row, so a seeded request gives the same tokens
whether it runs alone or inside a batch.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch

from autarky.errors import UserError


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or negative = off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # alternatives returned per generated token; None = no logprobs
    prompt_logprobs: int | None = None  # the same for prompt tokens (completions `echo`)
    n: int = 1

    def __post_init__(self) -> None:
        if self.max_tokens < 0:
            raise UserError(f"max tokens must be ≥ 0, got {self.max_tokens}")
        if self.temperature < 0:
            raise UserError(f"temperature must be ≥ 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top-p must be in (0, 1], got {self.top_p}")

    def generator(self, choice: int, device: torch.device | str = "cpu") -> torch.Generator:
        """Choice j of a seeded request uses seed + j, so the n choices differ but each is reproducible."""
        seed = secrets.randbits(63) if self.seed is None else (self.seed + choice) % (1 << 63)
        return torch.Generator(device=device).manual_seed(seed)


def sample_rows(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> list[int]:
    """One token per row of logits (B, V); greedy where temperature is 0, else top-k then nucleus sampling."""
    greedy = logits.argmax(dim=-1).tolist()
    out = []
    for row, (p, gen) in enumerate(zip(params, generators, strict=True)):
        if p.temperature == 0.0:
            out.append(greedy[row])
            continue
        scores = logits[row].float() / p.temperature
        if 0 < p.top_k < scores.shape[-1]:
            kth = torch.topk(scores, p.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True)
            cumulative = sorted_scores.softmax(-1).cumsum(-1)
            # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            drop = cumulative - sorted_scores.softmax(-1) >= p.top_p
            scores = scores.scatter(0, order, sorted_scores.masked_fill(drop, float("-inf")))
        probs = scores.softmax(-1)
        out.append(int(torch.multinomial(probs, 1, generator=gen)))
    return out


def token_logprobs(
    logprobs: torch.Tensor, chosen: torch.Tensor, top: int
) -> tuple[list[float], list[list[tuple[int, float]]]]:
    """For rows of log-probabilities (N, V) and chosen ids (N,): each chosen id's logprob and the top-`top`
    (id, logprob) pairs, best first."""
    chosen_lp = logprobs.gather(-1, chosen[:, None])[:, 0].tolist()
    if top <= 0:
        return chosen_lp, [[] for _ in chosen_lp]
    values, ids = torch.topk(logprobs, top, dim=-1)
    return chosen_lp, [list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
