"""Sampling parameters and per-row sampling: what `autarky sample` and the serving engine both draw tokens with.

Each sequence owns a torch.Generator and is sampled on its own row, so a seeded request gives the same tokens
whether it runs alone or inside a batch. Logit adjustments (`logit_bias`, the penalties) run vectorised over only
the rows that ask for them, and a grammar's allowed-token mask is unpacked only for a row whose first draw it
rejects: a batch of plain rows pays nothing for either.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from autarky.errors import UserError


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or negative = off
    min_p: float = 0.0  # drop tokens below min_p × the most likely token's probability; 0 = off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # alternatives returned per generated token; None = no logprobs
    prompt_logprobs: int | None = None  # the same for prompt tokens (completions `echo`)
    n: int = 1
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    presence_penalty: float = 0.0  # OpenAI/vLLM: over generated tokens, once per distinct token
    frequency_penalty: float = 0.0  # OpenAI/vLLM: over generated tokens, per occurrence
    repetition_penalty: float = 1.0  # HF/vLLM: over prompt and generated tokens, divides positive logits

    def __post_init__(self) -> None:
        if self.max_tokens < 0:
            raise UserError(f"max tokens must be ≥ 0, got {self.max_tokens}")
        if self.temperature < 0:
            raise UserError(f"temperature must be ≥ 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top-p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise UserError(f"min-p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise UserError(f"repetition penalty must be > 0, got {self.repetition_penalty}")

    @property
    def penalized(self) -> bool:
        """Whether sampling needs this row's token history."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)

    @property
    def adjusts_logits(self) -> bool:
        return self.penalized or bool(self.logit_bias)

    def generator(self, choice: int, device: torch.device | str = "cpu") -> torch.Generator:
        """Choice j of a seeded request uses seed + j, so the n choices differ but each is reproducible."""
        seed = secrets.randbits(63) if self.seed is None else (self.seed + choice) % (1 << 63)
        return torch.Generator(device=device).manual_seed(seed)


@dataclass
class History:
    """The token ids a penalized row has seen: the prompt (repetition penalty) and its own output (all three)."""

    prompt: Sequence[int]
    output: Sequence[int]


def _counts(rows: list[Sequence[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """(R, V) occurrence counts of each row's ids, built in one scatter over right-padded rows."""
    width = max((len(r) for r in rows), default=0)
    counts = torch.zeros(len(rows), vocab + 1, device=device)
    if width:
        ids = torch.full((len(rows), width), vocab, dtype=torch.long)  # pads count into the spare column
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        counts.scatter_add_(1, ids.to(device), torch.ones(ids.shape, device=device))
    return counts[:, :vocab]


def adjusted_rows(logits: torch.Tensor, rows: list[int], params: list[SamplingParams],
                  histories: list[History | None]) -> torch.Tensor:
    """Rows `rows` of logits (a new (R, V) tensor) after logit_bias, then the repetition, frequency and presence
    penalties (vLLM's order)."""
    sub = logits.index_select(0, torch.tensor(rows, device=logits.device))
    vocab = sub.shape[-1]
    for i, b in enumerate(rows):
        for token, bias in params[b].logit_bias:
            if 0 <= token < vocab:
                sub[i, token] += bias
    pen = [i for i, b in enumerate(rows) if params[b].penalized]
    if pen:
        hist = [histories[rows[i]] or History((), ()) for i in pen]
        ps = [params[rows[i]] for i in pen]
        col = {"device": logits.device}
        out = _counts([h.output for h in hist], vocab, logits.device)
        seen = (out + _counts([h.prompt for h in hist], vocab, logits.device)) > 0
        rep = torch.tensor([p.repetition_penalty for p in ps], **col)[:, None]
        x = sub[pen]
        x = torch.where(seen, torch.where(x > 0, x / rep, x * rep), x)
        x -= torch.tensor([p.frequency_penalty for p in ps], **col)[:, None] * out
        x -= torch.tensor([p.presence_penalty for p in ps], **col)[:, None] * (out > 0)
        sub[pen] = x
    return sub


_BITS = torch.arange(32, dtype=torch.int32)


def unpack_mask(words: torch.Tensor, vocab: int) -> torch.Tensor:
    """A packed allowed-token bitmask (int32 words, token t is bit t % 32 of word t // 32, as llguidance writes
    them) as booleans (vocab,)."""
    bits = ((words[:, None] >> _BITS.to(words.device)) & 1).bool().flatten()
    return bits[:vocab] if bits.numel() >= vocab else torch.nn.functional.pad(bits, (0, vocab - bits.numel()))


def _allows(words: torch.Tensor, token: int) -> bool:
    return token < 32 * words.numel() and bool((int(words[token >> 5]) >> (token & 31)) & 1)


def _draw(scores: torch.Tensor, p: SamplingParams, gen: torch.Generator | None) -> int:
    if p.temperature == 0.0:
        return int(scores.argmax())
    scores = scores.float() / p.temperature
    if 0 < p.top_k < scores.shape[-1]:
        kth = torch.topk(scores, p.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if p.min_p > 0:
        probs = scores.softmax(-1)
        scores = scores.masked_fill(probs < p.min_p * probs.max(), float("-inf"))
    if p.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop = cumulative - sorted_scores.softmax(-1) >= p.top_p
        scores = scores.scatter(0, order, sorted_scores.masked_fill(drop, float("-inf")))
    return int(torch.multinomial(scores.softmax(-1), 1, generator=gen))


def sample_rows(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    histories: list[History | None] | None = None,
    allowed: dict[int, torch.Tensor] | None = None,
) -> list[int]:
    """One token per row of logits (B, V); greedy where temperature is 0, else top-k, min-p, then nucleus
    sampling. `allowed` maps a row to its packed allowed-token bitmask (a grammar's; see unpack_mask);
    `histories` gives penalized rows their tokens. Neither is read for rows that do not need it, and `logits`
    is left unchanged."""
    if not allowed and all(p.temperature == 0.0 and not p.adjusts_logits for p in params):
        return logits.argmax(dim=-1).tolist()  # the common all-greedy step: one op, no per-row tensors or loop
    rows = list(logits.unbind(0))
    greedy = logits.argmax(dim=-1).tolist()
    adjusted = [b for b, p in enumerate(params) if p.adjusts_logits]
    if adjusted:
        sub = adjusted_rows(logits, adjusted, params, histories or [None] * len(params))
        for i, (b, token) in enumerate(zip(adjusted, sub.argmax(dim=-1).tolist(), strict=True)):
            rows[b], greedy[b] = sub[i], token
    out = []
    for b, (p, gen) in enumerate(zip(params, generators, strict=True)):
        words = allowed.get(b) if allowed else None
        if words is not None and (p.top_p < 1 or p.top_k > 0 or p.min_p > 0):  # the mask first, as vLLM
            out.append(_draw(rows[b].masked_fill(~unpack_mask(words, rows[b].shape[-1]), float("-inf")), p, gen))
            continue
        token = greedy[b] if p.temperature == 0.0 else _draw(rows[b], p, gen)
        if words is not None and not _allows(words, token):
            # Drawing from p, and on a disallowed token drawing again from p restricted to the allowed set A, gives
            # each allowed t probability p(t) + (1 - p(A)) p(t) / p(A) = p(t) / p(A): exactly the masked
            # distribution, while rows whose first draw is allowed never build a mask.
            token = _draw(rows[b].masked_fill(~unpack_mask(words, rows[b].shape[-1]), float("-inf")), p, gen)
        out.append(token)
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
