"""Client-side traffic for the demo: timed requests through the official `openai` SDK (bursts: `drill`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import openai


@dataclass
class StreamTiming:
    text: str
    ttft_s: float
    tokens: int
    total_s: float

    @property
    def tokens_per_s(self) -> float:
        decode_s = self.total_s - self.ttft_s
        return (self.tokens - 1) / decode_s if self.tokens > 1 and decode_s > 0 else float("nan")


def timed_chat(client: openai.OpenAI, model: str, prompt: str, max_tokens: int, chat: bool = True,
               temperature: float = 0.0) -> StreamTiming:
    """One streamed request; time to first token and decode tokens/s as the client sees them."""
    start = time.perf_counter()
    first: float | None = None
    pieces: list[str] = []
    tokens = 0
    if chat:
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
            temperature=temperature, seed=0, stream=True, stream_options={"include_usage": True})
    else:
        stream = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens,
                                           temperature=temperature, seed=0, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        for choice in chunk.choices:
            piece = choice.delta.content if chat else choice.text
            if piece:
                first = first or time.perf_counter()
                pieces.append(piece)
    end = time.perf_counter()
    return StreamTiming("".join(pieces), (first or end) - start, tokens, end - start)
