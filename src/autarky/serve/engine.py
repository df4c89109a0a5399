"""The inference engine: continuous batching over a paged KV cache with prefix caching, in its own thread.

Each step the scheduler (autarky.serve.scheduler) picks the work: one token of every decoding sequence, and
chunks of prompts (new, partly computed or preempted) under a token budget; the engine runs it as one decode
forward and one or more prefill forwards, samples where a sequence's tokens are complete, and drops cancelled and
finished sequences, so requests join and leave a running batch at token granularity. Results go back to asyncio through
`loop.call_soon_threadsafe`, once per step for all rows. torch releases the GIL inside kernels, so the HTTP
event loop stays responsive while the engine computes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from autarky.contracts.wire import ContextOverflow
from autarky.model.llama import Attention, Llama
from autarky.model.sampling import History, SamplingParams, sample_rows, token_logprobs
from autarky.model.tokenizer import IncrementalText
from autarky.serve.blocks import BlockPool
from autarky.serve.cache import BLOCK_SIZE, PagedKVCache, kv_cache_blocks
from autarky.serve.errors import ContextLengthExceeded, InvalidRequest, KVCacheTooSmall, NotReady, QueueFull
from autarky.serve.events import ErrorEvent, Event, PromptEvent, Request, TokenEvent, TopLogprobs, deliver
from autarky.serve.lora import LoraManager
from autarky.serve.metrics import ServeMetrics
from autarky.serve.options import DEFAULTS
from autarky.serve.scheduler import Chunk, Plan, Scheduler, Sequence
from autarky.serve.structured import GrammarCompiler
from autarky.serve.text import TextCodec

log = logging.getLogger("autarky.serve")

class Engine:
    def __init__(
        self,
        model: Llama,
        codec: TextCodec,
        *,
        max_batch: int = 32,
        max_queue: int = 256,
        max_model_len: int | None = None,
        metrics: ServeMetrics | None = None,
        name: str = "model",
        lora: LoraManager | None = None,
        kv_cache_gb: float | None = DEFAULTS.kv_cache_gb,
        enable_prefix_caching: bool = DEFAULTS.enable_prefix_caching,
        max_num_batched_tokens: int = DEFAULTS.max_num_batched_tokens,
    ) -> None:
        cfg = model.config
        self.model = model.eval()
        self.codec = codec
        self.name = name
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_model_len = min(max_model_len or cfg.max_seq_len, cfg.max_seq_len)
        self.metrics = metrics
        self.lora = lora  # told each step's per-row adapters (request.adapter) before the forward
        param = next(model.parameters())
        self.device = param.device
        # On CPU, SDPA shares each key/value head across its query group (same result, no copies of the whole
        # cache: 4x faster attention at batch 32); elsewhere the repeat keeps CUDA's fused kernels.
        for module in model.modules():
            if isinstance(module, Attention):
                module.share_kv_heads = self.device.type == "cpu"
        # Inference tensors from the start, like the ones the cache grows into later inside the engine thread:
        # compiled kernels would recompile for the change of tensor kind.
        per_block = PagedKVCache.bytes_per_block(cfg.n_layers, BLOCK_SIZE, cfg.n_kv_heads, cfg.head_dim,
                                                 param.dtype)
        n_blocks = kv_cache_blocks(kv_cache_gb, per_block, max_batch, self.max_model_len)
        with torch.inference_mode():
            self.cache = PagedKVCache(cfg.n_layers, n_blocks, BLOCK_SIZE, cfg.n_kv_heads, cfg.head_dim, param.dtype,
                                      self.device)
        self.pool = BlockPool(n_blocks, BLOCK_SIZE, caching=enable_prefix_caching)
        self.scheduler = Scheduler(self.pool, max_batch, max(max_num_batched_tokens, 1))
        log.info("%s: KV cache of %d blocks x %d tokens = %d tokens, %.3f GB; prefix caching %s, %d tokens per "
                 "step", name, n_blocks, BLOCK_SIZE, n_blocks * BLOCK_SIZE, n_blocks * per_block / 1e9,
                 "on" if enable_prefix_caching else "off", max_num_batched_tokens)
        self._inbox: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self._stepping: list[Sequence] = []  # this step's sequences (failed along with it if it raises)
        self._lock = threading.Lock()
        self._queued = 0  # submitted, not yet admitted
        self._accepting = True
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        self.grammars = GrammarCompiler(codec, cfg.vocab_size)
        # Grammar masks for the next step are computed here while the forward pass runs (both drop the GIL).
        self._masker = ThreadPoolExecutor(1, thread_name_prefix=f"masks-{name}")

    # ---- called from the asyncio side -------------------------------------------------------------------

    def start(self) -> None:
        self.warm_up()
        self._thread.start()

    def warm_up(self) -> None:
        """One tiny prefill and decode step before serving: the first calls into the math libraries and the
        first allocations are slow, and that cost belongs to startup, not to the first client."""
        with torch.inference_mode():
            end = min(13, self.max_model_len)
            blocks = [self.pool.allocate() for _ in range(-(-end // BLOCK_SIZE))]
            try:
                self.cache.begin([blocks], [0], [2])
                self._forward(torch.zeros(1, 2, dtype=torch.long, device=self.device),
                              torch.arange(2, device=self.device)[None], logits_at=[1])
                # One row (the compiled kernels) and two (oneDNN), at a position whose length matches no other
                # size of the model: the compiler would otherwise assume the two stay equal.
                for rows in (1, 2)[: self.max_batch]:
                    positions = torch.full((rows,), end - 1, device=self.device)
                    self.cache.begin([blocks] * rows, [end - 1] * rows, [1] * rows)
                    self._forward(torch.zeros(rows, 1, dtype=torch.long, device=self.device), positions[:, None],
                                  logits_at=[0] * rows)
            finally:
                self.pool.release(blocks)

    def check(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Reject what can never run, before anything is queued."""
        if not prompt_ids:
            raise InvalidRequest("the prompt is empty; send at least one token", param="prompt")
        bad = [t for t in prompt_ids if not 0 <= t < self.model.config.vocab_size]
        if bad:
            raise InvalidRequest(
                f"token id {bad[0]} is outside the vocabulary (0..{self.model.config.vocab_size - 1})", param="prompt"
            )
        if params.n > self.max_batch:
            raise InvalidRequest(f"n={params.n} exceeds this server's --max-batch {self.max_batch}", param="n")
        if len(prompt_ids) + params.max_tokens > self.max_model_len:
            raise ContextLengthExceeded(ContextOverflow(self.max_model_len, len(prompt_ids), params.max_tokens))
        capacity = self.pool.n_blocks * BLOCK_SIZE
        # n choices share the prompt's blocks but each copies its partial last one when they fork.
        forks = (params.n - 1) * BLOCK_SIZE if len(prompt_ids) % BLOCK_SIZE else 0
        if len(prompt_ids) + max(params.max_tokens, forks) > capacity:
            raise KVCacheTooSmall(len(prompt_ids), params.max_tokens, capacity)

    def submit(self, request: Request) -> None:
        self.check(request.prompt_ids, request.params)
        with self._lock:
            if not self._accepting:
                raise NotReady("the server is shutting down")
            if self._queued >= self.max_queue:
                raise QueueFull(self.max_queue)
            self._queued += 1
        self._inbox.put(request)

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting; finish every request already accepted; stop the thread."""
        with self._lock:
            self._accepting = False
        self._inbox.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._masker.shutdown(wait=False)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    # ---- the engine thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                idle = not self.scheduler.running and not self.scheduler.waiting
                self._drain_inbox(block=idle)
                if self._stopping and idle:
                    return
                try:
                    self._step()
                except Exception as exc:  # a failed step fails its requests, never the server
                    log.exception("engine step failed")
                    self._fail_all(f"generation failed: {exc}")
                self._update_gauges()

    def _drain_inbox(self, block: bool) -> None:
        while True:
            try:
                item = self._inbox.get(block=block)
            except queue.Empty:
                return
            block = False
            if item is None:
                self._stopping = True
            else:
                self.scheduler.waiting.append(item)

    def _step(self) -> None:
        out: list[tuple[Request, Event]] = []
        self._drop_cancelled()
        plan = self.scheduler.schedule(self._new_sequence)
        self._stepping = [c.seq for c in plan.decode + plan.prefill]
        self._account(plan)
        if plan.decode:
            self._decode(plan.decode, out)
        group: list[Chunk] = []
        for chunk in plan.prefill:
            if chunk.seq.needs_all_logits:  # logits at every prompt position: alone
                self._prefill([chunk], out)
                continue
            longest = max(chunk.length, *(c.length for c in group)) if group else 0
            if group and (len(group) + 1) * longest > self.scheduler.token_budget:
                self._prefill(group, out)
                group = []
            group.append(chunk)
        if group:
            self._prefill(group, out)
        self._free_finished()
        deliver(out)
        self._stepping = []  # nothing here may outlive the step: a request keeps its LoRA adapter's slot

    def _new_sequence(self, request: Request) -> Sequence:
        return self._sequence(request, 0)

    def _account(self, plan: Plan) -> None:
        """Queue and prefix-cache figures of the requests this step admits for the first time."""
        now, m = time.perf_counter(), self.metrics
        for chunk in plan.prefill:
            seq = chunk.seq
            if seq.scheduled:
                continue
            seq.scheduled = True
            if seq.choice == 0 and seq.generated == 0:
                with self._lock:
                    self._queued -= 1
                if m:
                    m.queue_time.observe(now - seq.request.arrival)
                    m.prompt_tokens.inc(len(seq.request.prompt_ids))
                    m.prefix_cache_queries.inc(len(seq.request.prompt_ids))
                    m.prefix_cache_hits.inc(seq.cached_tokens)
        if m and plan.preempted:
            m.num_preemptions.inc(len(plan.preempted))

    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor, logits_at: list[int] | None = None,
                 rows: list[Request] | None = None) -> torch.Tensor:  # fmt: skip
        """The model over the paged cache (`cache.begin` first): float logits (B, V) at logits_at[b] of each
        row, or (B, T, V). `rows` are the requests of the rows, whose LoRA adapters the model applies."""
        if self.lora is not None:
            self.lora.set_rows([r.adapter for r in rows] if rows else None)
        return self.model(tokens, positions, self.cache, logits_at=logits_at).float()

    def _prefill(self, chunks: list[Chunk], out: list) -> None:
        """One forward over prompt chunks, right-padded (pads write to and read from the cache's scratch block,
        hidden from real tokens by the mask); sequences whose tokens are complete then sample."""
        seqs, lengths, starts = [c.seq for c in chunks], [c.length for c in chunks], [c.start for c in chunks]
        width = max(lengths)
        tokens = torch.tensor([s.tokens[c.start : c.start + c.length] + [0] * (width - c.length)
                               for s, c in zip(seqs, chunks, strict=True)], device=self.device)
        positions = (torch.tensor(starts, device=self.device)[:, None] + torch.arange(width, device=self.device)
                     ).clamp(max=self.max_model_len - 1)
        requests = [s.request for s in seqs]
        self.cache.begin([s.blocks for s in seqs], starts, lengths)
        first = requests[0]
        if seqs[0].needs_all_logits:  # alone (see _step), from position 0
            logits = self._forward(tokens, positions, rows=requests)[0]  # (T, V)
            lp = torch.log_softmax(logits[:-1], dim=-1)
            chosen, top = token_logprobs(lp, tokens[0, 1:], first.params.prompt_logprobs)
            event = PromptEvent(first.index, first.params.n, list(first.prompt_ids), [None, *chosen], [None, *top])
            out.append((first, event))
            last_logits = logits[-1:]
        else:
            last_logits = self._forward(tokens, positions, [n - 1 for n in lengths], requests)  # (B, V)
        for chunk in chunks:
            self.scheduler.computed(chunk)
        rows, at = [], []
        for i, chunk in enumerate(chunks):
            seq, request = chunk.seq, chunk.seq.request
            if not chunk.completes:
                continue
            if seq.generated or seq.choice:  # recomputed after a preemption: it samples on
                rows.append(seq)
                at.append(i)
                continue
            if request.params.max_tokens == 0:
                for choice in range(request.params.n):
                    out.append((request, TokenEvent(request.index + choice, None, "", finish_reason="length")))
                self._record_end(request)
                seq.finished = True
                continue
            request.open_choices = request.params.n
            choices = [seq]
            for choice in range(1, request.params.n):  # the other choices share the prompt's blocks
                child = self._sequence(request, choice)
                self.scheduler.fork(seq, child, self.cache.copy_block)
                child.scheduled = True
                choices.append(child)
            rows += choices
            at += [i] * len(choices)
        if rows:
            self._accept_rows(rows, last_logits[at], out)

    def _sequence(self, request: Request, choice: int) -> Sequence:
        params = request.params
        text = IncrementalText(self.codec.decode, params.stop)
        matcher = self.grammars.matcher(request.grammar) if request.grammar else None
        return Sequence(request, choice, params.generator(choice, self.device), text, list(request.prompt_ids),
                        matcher=matcher)

    def _decode(self, chunks: list[Chunk], out: list) -> None:
        rows = [c.seq for c in chunks]
        starts = [c.start for c in chunks]
        tokens = torch.tensor([[s.tokens[c.start]] for s, c in zip(rows, chunks, strict=True)], device=self.device)
        positions = torch.tensor(starts, device=self.device)
        self.cache.begin([s.blocks for s in rows], starts, [1] * len(rows))
        masks = self._masker.submit(self._masks, rows) if any(s.matcher for s in rows) else None
        logits = self._forward(tokens, positions[:, None], [0] * len(rows), [s.request for s in rows])  # (B, V)
        for chunk in chunks:
            self.scheduler.computed(chunk)
        self._accept_rows(rows, logits, out, masks)

    def _masks(self, rows: list[Sequence]) -> dict[int, torch.Tensor]:
        return self.grammars.masks([s.matcher for s in rows])

    def _accept_rows(self, rows: list[Sequence], logits: torch.Tensor, out: list,
                     masks: Future | None = None) -> None:
        params = [s.request.params for s in rows]
        allowed = masks.result() if masks is not None else self._masks(rows)
        histories = [History(s.request.prompt_ids, s.text.ids) if p.penalized else None
                     for s, p in zip(rows, params, strict=True)] if any(p.penalized for p in params) else None
        chosen = sample_rows(logits, params, [s.generator for s in rows], histories, allowed)
        want = [p.logprobs is not None for p in params]
        lps: list[float | None] = [None] * len(rows)
        tops: list[TopLogprobs | None] = [None] * len(rows)
        if any(want):
            k = max(p.logprobs or 0 for p in params)
            lp, top = token_logprobs(torch.log_softmax(logits, -1), torch.tensor(chosen, device=logits.device), k)
            for b, p in enumerate(params):
                if want[b]:
                    lps[b], tops[b] = lp[b], top[b][: p.logprobs]
        now = time.perf_counter()
        for b, s in enumerate(rows):
            self._emit(s, chosen[b], lps[b], tops[b], now, out)

    def _emit(self, s: Sequence, token: int, lp: float | None, top: TopLogprobs | None, now: float,
              out: list) -> None:
        request, m = s.request, self.metrics
        if m:
            if s.generated == 0 and s.choice == 0:
                m.time_to_first_token.observe(now - request.arrival)
            elif s.generated:
                m.inter_token_latency.observe(now - s.last_time)
                m.time_per_output_token.observe(now - s.last_time)
            m.generation_tokens.inc()
        s.last_time = now
        text, finish = s.take(token, self.codec.eos_token_ids, self.max_model_len)
        index = request.index + s.choice
        out.append((request, TokenEvent(index, token, text, lp, top)))
        if finish:
            out.append((request, TokenEvent(index, None, "", finish_reason=finish)))
            s.finished = True  # freed by _free_finished after the whole step
            if m:
                m.request_success.labels(model_name=self.name, finished_reason=finish).inc()

    def _free_finished(self) -> None:
        for seq in [s for s in self.scheduler.running if s.finished]:
            self._release(seq)

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self.scheduler.running if s.request.cancelled]:
            self._release(seq)
        waiting = self.scheduler.waiting
        for item in [w for w in waiting if (w.request if isinstance(w, Sequence) else w).cancelled]:
            waiting.remove(item)
            if isinstance(item, Request):
                with self._lock:
                    self._queued -= 1

    def _release(self, seq: Sequence) -> None:
        self.scheduler.release(seq)
        request = seq.request
        request.open_choices -= 1
        if request.open_choices == 0:
            self._record_end(request)

    def _record_end(self, request: Request) -> None:
        if self.metrics and not request.cancelled:
            self.metrics.e2e_latency.observe(time.perf_counter() - request.arrival)

    def _fail_all(self, message: str) -> None:
        failed = {s.request for s in self.scheduler.running + self._stepping}
        for seq in list(self.scheduler.running):
            self.scheduler.release(seq)
        waiting = self.scheduler.waiting
        for seq in [w for w in waiting if isinstance(w, Sequence) and w.request in failed]:
            waiting.remove(seq)
        self._stepping = []
        deliver([(r, ErrorEvent(message)) for r in failed])

    def _update_gauges(self) -> None:
        if self.metrics:
            running = self.scheduler.running
            self.metrics.num_running.set(len({id(s.request) for s in running}))
            self.metrics.num_waiting.set(self._queued)
            self.metrics.kv_cache(self.pool.stats())
