"""What the engine takes and gives back: a Request in, Token/Prompt/Error events out (one asyncio queue each).

Kept apart from the engine so the HTTP layer and tests depend on these shapes, not on the scheduler.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from autarky.model.sampling import SamplingParams

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
    arrival: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    open_choices: int = 0
    adapter: LoraAdapter | None = None  # the LoRA adapter its rows run with (autarky.serve.lora); None = base

    def cancel(self) -> None:
        self.cancelled = True  # read by the engine thread between steps
