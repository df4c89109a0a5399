"""The inference engine: prefill + decode over a slot KV cache, with continuous batching, in its own thread.

Between decode steps the loop drops cancelled and finished sequences and admits waiting requests (one prefill
each), so requests join and leave a running batch at token granularity. Results go back to asyncio through
`loop.call_soon_threadsafe`, once per step for all rows. torch releases the GIL inside kernels, so the HTTP
event loop stays responsive while the engine computes.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass

import torch

from autarky.contracts.wire import ContextOverflow
from autarky.model.llama import Attention, Llama
from autarky.model.sampling import SamplingParams, sample_rows, token_logprobs
from autarky.model.tokenizer import IncrementalText
from autarky.serve.cache import SlotKVCache
from autarky.serve.errors import ContextLengthExceeded, InvalidRequest, NotReady, QueueFull
from autarky.serve.events import ErrorEvent, Event, PromptEvent, Request, TokenEvent, TopLogprobs
from autarky.serve.lora import LoraManager
from autarky.serve.metrics import ServeMetrics
from autarky.serve.text import TextCodec

log = logging.getLogger("autarky.serve")

MAX_PREFILL_TOKENS = 4096  # padded prompt tokens per batched prefill


@dataclass(eq=False)
class Sequence:
    request: Request
    choice: int
    generator: torch.Generator
    text: IncrementalText
    next_token: int = 0  # sampled, not yet fed to the model
    position: int = 0  # where next_token goes in the cache
    generated: int = 0
    last_time: float = 0.0
    finished: bool = False


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
        with torch.inference_mode():
            self.cache = SlotKVCache(
                cfg.n_layers, max_batch, cfg.n_kv_heads, cfg.head_dim, self.max_model_len, param.dtype, self.device
            )
        self._inbox: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self._waiting: deque[Request] = deque()
        self._running: list[Sequence] = []  # row b of a decode step is slot b
        self._admitted: list[Request] = []  # admitted in the current step
        self._lock = threading.Lock()
        self._queued = 0  # submitted, not yet admitted
        self._accepting = True
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)

    # ---- called from the asyncio side -------------------------------------------------------------------

    def start(self) -> None:
        self.warm_up()
        self._thread.start()

    def warm_up(self) -> None:
        """One tiny prefill and decode step before serving: the first calls into the math libraries and the
        first allocations are slow, and that cost belongs to startup, not to the first client."""
        with torch.inference_mode():
            self.cache.begin_prefill(0, 2)
            self._forward(torch.zeros(1, 2, dtype=torch.long, device=self.device),
                          torch.arange(2, device=self.device)[None], logits_at=[1])
            # One row (the compiled kernels) and two (oneDNN), at a position whose length matches no other size
            # of the model: the compiler would otherwise assume the two stay equal.
            for rows in (1, 2)[: self.max_batch]:
                positions = torch.full((rows,), min(12, self.max_model_len - 1), device=self.device)
                self.cache.begin_decode(positions)
                self._forward(torch.zeros(rows, 1, dtype=torch.long, device=self.device), positions[:, None],
                              logits_at=[0] * rows)

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

    @property
    def num_running(self) -> int:
        return len(self._running)

    # ---- the engine thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                self._drain_inbox(block=not self._running and not self._waiting)
                if self._stopping and not self._running and not self._waiting:
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
                self._waiting.append(item)

    def _step(self) -> None:
        out: list[tuple[Request, Event]] = []
        self._drop_cancelled()
        admitted, free = [], self.max_batch - len(self._running)
        while self._waiting and self._waiting[0].params.n <= free:
            request = self._waiting.popleft()
            with self._lock:
                self._queued -= 1
            if not request.cancelled:
                admitted.append(request)
                free -= request.params.n
        self._admitted = admitted  # failed along with the running rows if this step raises
        group: list[Request] = []
        for request in admitted:
            if request.params.prompt_logprobs is not None:  # needs logits at every prompt position: alone
                self._prefill([request], out)
                continue
            longest = max(len(request.prompt_ids), *(len(r.prompt_ids) for r in group)) if group else 0
            if group and (len(group) + 1) * longest > MAX_PREFILL_TOKENS:
                self._prefill(group, out)
                group = []
            group.append(request)
        if group:
            self._prefill(group, out)
        if self._running:
            self._decode(out)
        self._deliver(out)
        self._admitted = []  # nothing here may outlive the step: a request keeps its LoRA adapter's slot

    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor, logits_at: list[int] | None = None,
                 rows: list[Request] | None = None) -> torch.Tensor:  # fmt: skip
        """The model over the slot cache: float logits (B, V) at logits_at[b] of each row, or (B, T, V).
        `rows` are the requests of the rows, whose LoRA adapters the model applies (None: base only)."""
        if self.lora is not None:
            self.lora.set_rows([r.adapter for r in rows] if rows else None)
        return self.model(tokens, positions, self.cache, logits_at=logits_at).float()

    def _prefill(self, requests: list[Request], out: list) -> None:
        """One forward over the prompts of `requests`, right-padded into consecutive slots. Padding sits after
        each prompt, so plain causal attention is exact for the real tokens; the pads' keys land in cache
        positions that decode overwrites before any mask lets them be read."""
        base, lengths = len(self._running), [len(r.prompt_ids) for r in requests]
        width = max(lengths)
        tokens = torch.tensor([r.prompt_ids + [0] * (width - len(r.prompt_ids)) for r in requests],
                              device=self.device)
        positions = torch.arange(width, device=self.device)[None].expand(len(requests), width)
        self.cache.begin_prefill(base, width)
        first = requests[0]
        if first.params.prompt_logprobs is not None:  # alone (see _step)
            logits = self._forward(tokens, positions, rows=requests)[0]  # (T, V)
            lp = torch.log_softmax(logits[:-1], dim=-1)
            chosen, top = token_logprobs(lp, tokens[0, 1:], first.params.prompt_logprobs)
            event = PromptEvent(first.index, first.params.n, list(first.prompt_ids), [None, *chosen], [None, *top])
            out.append((first, event))
            last_logits = logits[-1:]
        else:
            last_logits = self._forward(tokens, positions, [n - 1 for n in lengths], requests)  # (B, V)
        if self.metrics:
            self.metrics.prompt_tokens.inc(sum(lengths))
        # Place each request's first choice compactly (only ever moving a slot down), then extra choices after.
        seqs, rows, extra = [], [], []
        for i, request in enumerate(requests):
            params = request.params
            if params.max_tokens == 0:
                for choice in range(params.n):
                    out.append((request, TokenEvent(request.index + choice, None, "", finish_reason="length")))
                self._record_end(request)
                continue
            request.open_choices = params.n
            slot = base + len(seqs)
            self.cache.copy_slot(base + i, slot, lengths[i])
            seqs.append(self._sequence(request, 0, lengths[i]))
            rows.append(i)
            extra += [(request, choice, slot, i) for choice in range(1, params.n)]
        for request, choice, src, i in extra:
            self.cache.copy_slot(src, base + len(seqs), lengths[i])
            seqs.append(self._sequence(request, choice, lengths[i]))
            rows.append(i)
        if seqs:
            self._running.extend(seqs)
            self._accept_rows(seqs, last_logits[rows], out)
            self._free_finished()

    def _sequence(self, request: Request, choice: int, position: int) -> Sequence:
        params = request.params
        text = IncrementalText(self.codec.decode, params.stop)
        return Sequence(request, choice, params.generator(choice, self.device), text, position=position)

    def _decode(self, out: list) -> None:
        rows = self._running
        tokens = torch.tensor([[s.next_token] for s in rows], device=self.device)
        positions = torch.tensor([s.position for s in rows], device=self.device)
        self.cache.begin_decode(positions)
        logits = self._forward(tokens, positions[:, None], [0] * len(rows), [s.request for s in rows])  # (B, V)
        for s in rows:
            s.position += 1
        self._accept_rows(rows, logits, out)
        self._free_finished()

    def _accept_rows(self, rows: list[Sequence], logits: torch.Tensor, out: list) -> None:
        params = [s.request.params for s in rows]
        chosen = sample_rows(logits, params, [s.generator for s in rows])
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
        request, params = s.request, s.request.params
        m = self.metrics
        if m:
            if s.generated == 0 and s.choice == 0:
                m.time_to_first_token.observe(now - request.arrival)
            elif s.generated:
                m.inter_token_latency.observe(now - s.last_time)
                m.time_per_output_token.observe(now - s.last_time)
            m.generation_tokens.inc()
        s.last_time = now
        s.generated += 1
        s.next_token = token
        finish = None
        if token in self.codec.eos_token_ids and not params.ignore_eos:
            text, finish = s.text.finish(), "stop"
        else:
            text, stopped = s.text.push(token)
            if stopped:
                finish = "stop"
            elif s.generated >= params.max_tokens or s.position >= self.max_model_len:
                finish = "length"
                text += s.text.finish()
        index = request.index + s.choice
        out.append((request, TokenEvent(index, token, text, lp, top)))
        if finish:
            out.append((request, TokenEvent(index, None, "", finish_reason=finish)))
            s.finished = True  # freed by _free_finished after the whole step
            if m:
                m.request_success.labels(model_name=self.name, finished_reason=finish).inc()

    def _free_finished(self) -> None:
        for seq in [s for s in self._running if s.finished]:
            self._release(seq)

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._running if s.request.cancelled]:
            self._release(seq)

    def _release(self, seq: Sequence) -> None:
        """Free seq's slot, moving the last row into it so slots stay compact."""
        slot = self._running.index(seq)
        last = self._running.pop()
        if last is not seq:
            self.cache.copy_slot(len(self._running), slot, last.position)
            self._running[slot] = last
        request = seq.request
        request.open_choices -= 1
        if request.open_choices == 0:
            self._record_end(request)

    def _record_end(self, request: Request) -> None:
        if self.metrics and not request.cancelled:
            self.metrics.e2e_latency.observe(time.perf_counter() - request.arrival)

    def _fail_all(self, message: str) -> None:
        failed = {s.request for s in self._running} | set(self._admitted)
        self._running.clear()
        self._admitted = []
        self._deliver([(r, ErrorEvent(message)) for r in failed])

    def _update_gauges(self) -> None:
        if self.metrics:
            self.metrics.num_running.set(len({id(s.request) for s in self._running}))
            self.metrics.num_waiting.set(self._queued)

    @staticmethod
    def _deliver(out: list[tuple[Request, Event]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Event]]] = {}
        for request, event in out:
            if not request.cancelled:
                by_loop.setdefault(request.loop, []).append((request.sink, event))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # the loop closed under a client that went away
                pass


def _put_all(items: list[tuple[asyncio.Queue, Event]]) -> None:
    for sink, event in items:
        sink.put_nowait(event)
