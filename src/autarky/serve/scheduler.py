"""Which tokens of which sequences the next step computes, under a token budget and the KV cache's blocks.

Every live sequence has work: the tokens from `computed` to the end of `tokens` (its prompt plus every token
sampled so far) whose keys/values are not in the cache yet. A decoding sequence has one (the token it just
sampled); a new one its prompt, less the blocks the prefix cache already holds; a preempted one everything it had.
Each step (vLLM V1's scheduler, recompute preemption):
  1. running sequences, oldest first, get their work (a prompt in chunks of at most the budget left: chunked
     prefill, so a long prompt shares steps with the decoding rows rather than stalling them); when the pool has no
     block left, the newest running sequence is preempted: its blocks are freed and it waits at the front of the
     queue, to be recomputed from its tokens when blocks are free again (its sampler state lives on);
  2. then, unless that happened, waiting requests are admitted while batch rows, budget and blocks allow.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch

from autarky.model.tokenizer import IncrementalText
from autarky.serve.blocks import BlockPool, block_hashes
from autarky.serve.events import Request


@dataclass(eq=False)
class Sequence:
    request: Request
    choice: int
    generator: torch.Generator
    text: IncrementalText
    tokens: list[int]  # prompt + sampled tokens; keys/values of tokens[:computed] are in `blocks`
    computed: int = 0
    blocks: list[int] = field(default_factory=list)  # block table, in position order
    hashes: list[int] = field(default_factory=list)  # chain hashes of its full blocks (registered in the pool)
    generated: int = 0
    last_time: float = 0.0
    finished: bool = False
    matcher: object | None = None  # llguidance.LLMatcher of a constrained sequence
    scheduled: bool = False  # has been given work once (queue time is measured to then)
    cached_tokens: int = 0  # prompt tokens the prefix cache held at admission

    def take(self, token: int, eos_token_ids: Collection[int], max_model_len: int) -> tuple[str, str | None]:
        """Append a sampled token: the text it releases, and why the sequence finishes with it (or None)."""
        params = self.request.params
        self.generated += 1
        complete = False  # the grammar can take no further token: the output is done
        if self.matcher is not None:
            if not self.matcher.consume_token(token):  # type: ignore[attr-defined]
                raise RuntimeError(f"the grammar rejected token {token}: {self.matcher.get_error()}")  # type: ignore[attr-defined]
            complete = self.matcher.is_stopped()  # type: ignore[attr-defined]
        if token in eos_token_ids and not params.ignore_eos:
            return self.text.finish(), "stop"
        text, stopped = self.text.push(token)
        if stopped:
            return text, "stop"
        if complete:
            return text + self.text.finish(), "stop"
        if self.generated >= params.max_tokens or len(self.tokens) >= max_model_len:
            return text + self.text.finish(), "length"
        self.tokens.append(token)  # computed by the next step
        return text, None

    @property
    def work(self) -> int:
        return len(self.tokens) - self.computed

    @property
    def prompt_done(self) -> bool:
        """Whether choice 0 has computed the whole prompt (before that there is one sequence per request)."""
        return self.generated > 0 or self.computed >= len(self.request.prompt_ids)

    @property
    def adapter_key(self) -> tuple[str, str] | None:
        adapter = self.request.adapter
        return None if adapter is None else (adapter.name, adapter.path)

    @property
    def needs_all_logits(self) -> bool:
        """prompt_logprobs: logits at every prompt position, so the prompt is computed whole, cache or not."""
        return self.request.params.prompt_logprobs is not None and self.generated == 0


@dataclass
class Chunk:
    seq: Sequence
    start: int  # first position computed
    length: int

    @property
    def completes(self) -> bool:
        """Whether this chunk reaches the end of the sequence's tokens (its last logits then sample)."""
        return self.start + self.length == len(self.seq.tokens)


@dataclass
class Plan:
    decode: list[Chunk] = field(default_factory=list)  # one token each
    prefill: list[Chunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)


class Scheduler:
    def __init__(self, pool: BlockPool, max_batch: int, token_budget: int) -> None:
        self.pool = pool
        self.max_batch = max_batch
        self.token_budget = token_budget
        self.waiting: deque[Request | Sequence] = deque()  # preempted sequences go back to the front
        self.running: list[Sequence] = []  # in admission order: the last is preempted first

    @property
    def rows_used(self) -> int:
        """Batch rows taken: each running sequence, and the n choices a prefilling request will fork into."""
        return sum(s.request.params.n if not s.prompt_done else 1 for s in self.running)

    def schedule(self, new_sequence: Callable[[Request], Sequence]) -> Plan:
        """The next step's work; new_sequence makes a waiting request's first sequence (choice 0)."""
        plan, budget = Plan(), self.token_budget
        for seq in list(self.running):
            if seq not in self.running:  # preempted by an older one this step
                continue
            if seq.work == 1 or seq.needs_all_logits:
                length = seq.work
            else:
                length = min(seq.work, budget)
            if length <= 0:
                continue
            if not self._reserve(seq, seq.computed + length, plan):
                continue
            chunk = Chunk(seq, seq.computed, length)
            (plan.decode if length == 1 and seq.generated else plan.prefill).append(chunk)
            budget -= length
        pending = self._pending_blocks() if self.waiting and self.pool.caching else set()
        while not plan.preempted and self.waiting and budget > 0:
            head = self.waiting[0]
            seq = head if isinstance(head, Sequence) else None
            request = seq.request if seq else head
            rows = 1 if seq and seq.prompt_done else request.params.n
            if self.rows_used + rows > self.max_batch:
                break
            chunk = self._admit(seq or new_sequence(request), budget, rows - 1, pending)
            if chunk is None:
                break
            self.waiting.popleft()
            plan.prefill.append(chunk)
            budget -= chunk.length
        return plan

    def _pending_blocks(self) -> set[int]:
        """Hashes of the full blocks running sequences have yet to compute (this step or a later one)."""
        bs = self.pool.block_size
        return {h for s in self.running for h in s.hashes[s.computed // bs :]}

    def _admit(self, seq: Sequence, budget: int, forks: int, pending: set[int]) -> Chunk | None:
        """Take the prefix cache's blocks for seq and room for its first chunk, or None (nothing taken) when
        the pool cannot hold that chunk now, or when the next block seq would compute is one a running sequence
        is computing: it waits for those blocks and reuses them, as vLLM does, instead of computing them twice
        (requests that share a new prefix and arrive together)."""
        bs = self.pool.block_size
        seq.hashes = block_hashes(seq.tokens, bs, seq.adapter_key, seq.hashes)
        hits = [] if seq.needs_all_logits else self.pool.cached_prefix(seq.hashes)
        if not seq.needs_all_logits and len(hits) < len(seq.hashes) and seq.hashes[len(hits)] in pending:
            return None
        if len(hits) * bs >= len(seq.tokens):
            hits = hits[:-1]  # recompute the last block: its logits sample the next token
        computed = len(hits) * bs
        work = len(seq.tokens) - computed
        length = work if seq.needs_all_logits else min(work, budget)
        needed = -(-(computed + length) // bs) - len(hits)
        if forks and computed + length == len(seq.tokens) and len(seq.tokens) % bs:
            needed += forks  # each other choice copies the prompt's partial last block
        reclaimed = sum(1 for b in hits if self.pool.refs[b] == 0)
        if self.pool.num_free - reclaimed < needed:
            return None
        for block in hits:
            self.pool.acquire(block)
        seq.blocks, seq.computed = list(hits), computed
        seq.cached_tokens = computed
        pending.update(seq.hashes[len(hits) :])
        self._grow(seq, computed + length)
        self.running.append(seq)
        return Chunk(seq, computed, length)

    def _reserve(self, seq: Sequence, end: int, plan: Plan) -> bool:
        """Blocks for seq's positions below `end`, preempting the newest running sequences as needed; False
        when seq itself had to go."""
        need = -(-end // self.pool.block_size) - len(seq.blocks)
        while self.pool.num_free < need:
            victim = self.running[-1]
            self.preempt(victim, plan)
            if victim is seq:
                return False
        self._grow(seq, end)
        return True

    def _grow(self, seq: Sequence, end: int) -> None:
        while len(seq.blocks) * self.pool.block_size < end:
            seq.blocks.append(self.pool.allocate())

    def preempt(self, seq: Sequence, plan: Plan) -> None:
        self.running.remove(seq)
        self.pool.release(seq.blocks)
        seq.blocks, seq.computed = [], 0
        for chunk in [c for c in plan.decode + plan.prefill if c.seq is seq]:
            (plan.decode if chunk in plan.decode else plan.prefill).remove(chunk)
        self.waiting.appendleft(seq)
        plan.preempted.append(seq)

    def computed(self, chunk: Chunk) -> None:
        """After the forward: the chunk's keys/values are in the cache; its newly full blocks become findable."""
        seq = chunk.seq
        seq.computed = chunk.start + chunk.length
        full = seq.computed // self.pool.block_size
        if len(seq.hashes) < full:
            seq.hashes = block_hashes(seq.tokens[: full * self.pool.block_size], self.pool.block_size,
                                      seq.adapter_key, seq.hashes)
        for i in range(chunk.start // self.pool.block_size, full):
            self.pool.register(seq.blocks[i], seq.hashes[i])

    def fork(self, seq: Sequence, child: Sequence, copy_block: Callable[[int, int, int], None]) -> None:
        """child (another choice of seq's request) shares seq's prompt blocks; the partial last one is copied."""
        bs, n = self.pool.block_size, seq.computed
        full = n // bs
        for block in seq.blocks[:full]:
            self.pool.acquire(block)
        child.blocks, child.computed, child.hashes = seq.blocks[:full], n, list(seq.hashes[:full])
        if n % bs:
            block = self.pool.allocate()
            copy_block(seq.blocks[full], block, n % bs)
            child.blocks.append(block)
        self.running.append(child)

    def release(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        self.pool.release(seq.blocks)
        seq.blocks = []
