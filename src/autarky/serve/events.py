"""What the engine takes and gives back: a Request in, Token/Prompt/Error events out (one asyncio queue each).

Kept apart from the engine so the HTTP layer and tests depend on these shapes, not on the scheduler.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from autarky.model.sampling import SamplingParams
from autarky.serve.structured import Grammar

if TYPE_CHECKING:
    from autarky.serve.lora import LoraAdapter

TopLogprobs = list[tuple[int, float]]


@dataclass
class TokenEvent:
    """One generated token of choice `index` (text may be empty while held back), or its end."""

    index: int
    token_id: int | None
    text: str
    logprob: float | None = None
    top_logprobs: TopLogprobs | None = None
    finish_reason: str | None = None


@dataclass
class PromptEvent:
    """Prompt log-probabilities of the prompt behind choices index .. index + count - 1 (first entry None)."""

    index: int
    count: int
    token_ids: list[int]
    logprobs: list[float | None]
    top_logprobs: list[TopLogprobs | None]


@dataclass
class ErrorEvent:
    message: str


Event = TokenEvent | PromptEvent | ErrorEvent


@dataclass(eq=False)
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    sink: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    index: int = 0  # index of this request's first choice in the HTTP response
    grammar: Grammar | None = None  # constrains every choice's output
    arrival: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    open_choices: int = 0
    adapter: LoraAdapter | None = None  # the LoRA adapter its rows run with (autarky.serve.lora); None = base

    def cancel(self) -> None:
        self.cancelled = True  # read by the engine thread between steps


def deliver(out: list[tuple[Request, Event]]) -> None:
    """Hand events to their requests' asyncio loops: one call_soon_threadsafe per loop for a whole step."""
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
