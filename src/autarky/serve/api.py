"""The OpenAI-compatible HTTP routes (plus vLLM's tokenizer routes), over a ModelRegistry."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from autarky.contracts.wire import ContextOverflow, error_envelope
from autarky.model.sampling import SamplingParams
from autarky.serve import responses as R
from autarky.serve.errors import ContextLengthExceeded, GenerationFailed, InvalidRequest, Unauthorized
from autarky.serve.events import ErrorEvent, Event, PromptEvent, TokenEvent
from autarky.serve.events import Request as EngineRequest
from autarky.serve.http_errors import error_response, install_error_handlers
from autarky.serve.intake import Intake, check_ids, encode_text
from autarky.serve.lora_routes import install_lora_routes, lora_cards
from autarky.serve.options import DEFAULT_MAX_BODY_MB
from autarky.serve.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    _Request,
)
from autarky.serve.registry import ModelRegistry, ServedModel
from autarky.serve.structured import Grammar
from autarky.serve.tools import ToolCallStream, ToolUse, template_messages

log = logging.getLogger("autarky.serve")
DISCONNECT_POLL_S = 0.5
# Routes besides /v1 that read or reveal what the model holds: behind the key as well.
KEYED_ROUTES = ("/tokenize", "/detokenize", "/tokenizer_info")


@dataclass
class Job:
    """The engine requests behind one HTTP request (one per prompt), sharing one event queue."""

    requests: list[EngineRequest]
    sink: asyncio.Queue
    prompt_tokens: int
    n_choices: int

    def cancel(self) -> None:
        for r in self.requests:
            r.cancel()

    async def events(self) -> AsyncIterator[Event]:
        finished = 0
        try:
            while finished < self.n_choices:
                event = await self.sink.get()
                yield event
                if isinstance(event, ErrorEvent):
                    return
                if isinstance(event, TokenEvent) and event.finish_reason:
                    finished += 1
        finally:
            if finished < self.n_choices:
                self.cancel()  # the client went away (or the stream failed): free the slots now


async def _start(served: ServedModel, prompts: list[list[int]], params_for: Callable[[list[int]], SamplingParams],
                 grammar: Grammar | None = None) -> Job:
    if grammar is not None:  # compiles it (once per grammar, off the event loop): a bad one is a 400 here
        await asyncio.to_thread(served.engine.grammars.matcher, grammar)
    loop, sink = asyncio.get_running_loop(), asyncio.Queue()
    job = Job([], sink, sum(len(p) for p in prompts), 0)
    try:
        for ids in prompts:
            params = params_for(ids)
            request = EngineRequest(ids, params, sink, loop, index=job.n_choices, grammar=grammar,
                                    adapter=served.adapter)
            served.engine.submit(request)
            job.requests.append(request)
            job.n_choices += params.n
    except Exception:
        job.cancel()
        raise
    return job


def _check_fields(body: _Request) -> None:
    bad = body.unsupported_fields()
    if bad:
        raise InvalidRequest(f"this server does not support {', '.join(bad)}; remove the field(s)", param=bad[0],
                         code="unsupported_parameter")
    ignored = body.ignored_fields()
    if ignored:
        log.warning("The following fields were present in the request but ignored: %s", ignored)


def _sampling(body: _Request, served: ServedModel, max_tokens: int, **fields) -> SamplingParams:
    """The sampling fields both routes share, plus the route's own."""
    return SamplingParams(
        max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
        min_p=body.min_p, seed=body.seed, stop=tuple(body.stop_list()), ignore_eos=body.ignore_eos,
        n=body.n, presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        logit_bias=body.logit_bias_pairs(served.engine.model.config.vocab_size), **fields,
    )


def _chat_ids(served: ServedModel, messages: list[ChatMessage], add_generation_prompt: bool = True,
              tools: ToolUse | None = None) -> list[int]:
    for i, m in enumerate(messages):
        if isinstance(m.content, list) and any(part.type != "text" for part in m.content):
            raise InvalidRequest("only text content parts are supported", param=f"messages.{i}.content")
    plain = [{"role": m.role, "content": m.text(), "tool_calls": m.tool_calls, "tool_call_id": m.tool_call_id}
             for m in messages]
    rendered, template_tools = template_messages(plain, tools, served.codec.supports_tools)
    try:
        return served.codec.chat_ids(rendered, add_generation_prompt, template_tools)
    except Exception as exc:  # the template's raise_exception and missing templates land here
        raise InvalidRequest(f"cannot apply the chat template: {exc}", param="messages") from exc


def _default_max_tokens(requested: int | None, served: ServedModel, prompt: list[int]) -> int:
    if requested is not None:
        return requested
    room = served.max_model_len - len(prompt)
    if room < 1:  # the prompt leaves no room for even one token
        raise ContextLengthExceeded(ContextOverflow(served.max_model_len, len(prompt), 1))
    return room


async def _collect(job: Job, raw: Request) -> dict[int, R.Choice]:
    choices = {i: R.Choice(i) for i in range(job.n_choices)}

    async def consume() -> None:
        async for event in job.events():
            if isinstance(event, ErrorEvent):
                raise GenerationFailed(event.message)
            R.apply_event(choices, event)  # type: ignore[arg-type]

    task = asyncio.ensure_future(consume())
    while not task.done():
        await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
        if not task.done() and await raw.is_disconnected():
            task.cancel()
            job.cancel()
            raise GenerationFailed("the client disconnected")
    task.result()
    return choices


def _sse_response(chunks: AsyncIterator[bytes]) -> StreamingResponse:
    async def guarded() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield chunk
        except Exception as exc:  # after the first byte the status is sent: report in-band, then end the stream
            log.exception("stream failed")
            yield R.sse(error_envelope(f"generation failed: {exc}", "server_error"))
            yield R.DONE

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(guarded(), media_type="text/event-stream", headers=headers)


def create_app(registry: ModelRegistry, on_ready: Callable[[], None] | None = None,
               on_failure: Callable[[], None] | None = None, api_key: str | None = None,
               max_body_mb: float = DEFAULT_MAX_BODY_MB) -> FastAPI:
    """The ASGI app. Models listed in the registry's specs load in a background thread at startup, so /health
    answers 503 until they are in; shutdown finishes in-flight requests before stopping the engines. With
    `api_key`, every /v1 route wants `Authorization: Bearer <api_key>` (as vLLM's --api-key)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        def load() -> None:
            registry.load()
            if registry.ready.is_set() and on_ready:
                on_ready()
            elif registry.error and on_failure:
                on_failure()

        if registry.specs and not registry.ready.is_set():
            threading.Thread(target=load, name="model-loader", daemon=True).start()
        else:
            registry.ready.set()
            if on_ready:
                on_ready()
        yield
        await asyncio.to_thread(registry.shutdown)

    app = FastAPI(title="autarky serve", lifespan=lifespan)
    install_error_handlers(app)
    install_lora_routes(app, registry)
    app.add_middleware(Intake, max_bytes=int(max_body_mb * 2**20))

    if api_key:
        @app.middleware("http")
        async def check_key(request: Request, call_next: Callable) -> Response:
            path = request.url.path
            keyed = path.startswith("/v1") or path in KEYED_ROUTES
            if keyed and request.headers.get("authorization") != f"Bearer {api_key}":
                return error_response(Unauthorized())
            return await call_next(request)

    @app.get("/health")
    async def health() -> dict:
        registry.get(None)  # raises NotReady (503) while loading
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(registry.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict:
        registry.get(None)
        data = [{"id": m.name, "object": "model", "created": m.created, "owned_by": "autarky", "root": m.source,
                 "max_model_len": m.max_model_len} for m in registry.models.values()]
        data += lora_cards(registry)
        return {"object": "list", "data": data}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, raw: Request) -> Response:
        served = registry.get(body.model)
        _check_fields(body)
        codec = served.codec
        prompts: list[list[int]] = []
        echo_texts: list[str] = []
        if not body.prompts():
            raise InvalidRequest("the prompt list is empty; send at least one prompt", param="prompt")

        def encode_all() -> None:  # in a thread: a big prompt must not stall the event loop (and /health)
            for p in body.prompts():
                ids = encode_text(served, p, "prompt") if isinstance(p, str) else check_ids(served, p, "prompt")
                prompts.append(ids)
                text = p if isinstance(p, str) else codec.decode(ids, skip_special_tokens=False)
                echo_texts.extend([text] * body.n)

        await asyncio.to_thread(encode_all)

        def params_for(ids: list[int]) -> SamplingParams:
            return _sampling(body, served, _default_max_tokens(body.max_tokens, served, ids),
                             logprobs=body.logprobs, prompt_logprobs=body.logprobs if body.echo else None)

        job = await _start(served, prompts, params_for, body.grammar())
        env = R.Envelope("cmpl", served.name)
        want_lp = body.logprobs is not None
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        if body.stream:
            return _sse_response(_stream_completion(job, env, codec, echo_texts if body.echo else None, want_lp,
                                                     include_usage, _continuous_usage(body)))
        choices = await _collect(job, raw)
        out = env.head("text_completion")
        out["choices"] = [R.completion_choice(codec, c, echo_texts[i] if body.echo else None, want_lp)
                          for i, c in sorted(choices.items())]
        out["usage"] = R.usage(job.prompt_tokens, list(choices.values()))
        return JSONResponse(out)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, raw: Request) -> Response:
        served = registry.get(body.model)
        _check_fields(body)
        codec = served.codec
        tools = ToolUse.from_request(body.tools, body.tool_choice, body.parallel_tool_calls)
        grammar = body.grammar()
        if tools and tools.forced and grammar:
            raise InvalidRequest(f"tool_choice {tools.choice!r} cannot be combined with {grammar.param}",
                                 param="tool_choice")
        grammar = grammar or (tools.grammar() if tools else None)
        ids = await asyncio.to_thread(_chat_ids, served, body.messages, True, tools)
        requested = body.max_completion_tokens or body.max_tokens
        top = body.top_logprobs or 0
        if body.top_logprobs and not body.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs=true", param="top_logprobs")

        def params_for(ids: list[int]) -> SamplingParams:
            return _sampling(body, served, _default_max_tokens(requested, served, ids),
                             logprobs=top if body.logprobs else None)

        job = await _start(served, [ids], params_for, grammar)
        env = R.Envelope("chatcmpl", served.name)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        if body.stream:
            return _sse_response(_stream_chat(job, env, codec, body.logprobs, include_usage, tools,
                                               _continuous_usage(body)))
        choices = await _collect(job, raw)
        out = env.head("chat.completion")
        out["choices"] = [R.chat_choice(codec, c, body.logprobs, tools) for _, c in sorted(choices.items())]
        out["usage"] = R.usage(job.prompt_tokens, list(choices.values()))
        return JSONResponse(out)

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict:
        served = registry.get(body.model)
        if body.messages is not None:
            ids = await asyncio.to_thread(_chat_ids, served, body.messages, body.add_generation_prompt)
        elif body.prompt is not None:
            ids = await asyncio.to_thread(encode_text, served, body.prompt, "prompt",
                                          add_special_tokens=body.add_special_tokens)
        else:
            raise InvalidRequest("send either prompt or messages", param="prompt")
        return {"count": len(ids), "max_model_len": served.max_model_len, "tokens": ids, "token_strs": None}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict:
        served = registry.get(body.model)
        check_ids(served, body.tokens, "tokens")
        return {"prompt": await asyncio.to_thread(served.codec.decode, body.tokens, skip_special_tokens=False)}

    @app.get("/tokenizer_info")
    async def tokenizer_info(model: str | None = None) -> dict:
        served = registry.get(model)
        return {**served.codec.info(), "model_max_length": served.max_model_len}

    return app


def _continuous_usage(body) -> bool:
    options = body.stream_options
    return bool(options and options.include_usage and options.continuous_usage_stats)


def _emitter(job: Job, choices: dict[int, R.Choice], continuous: bool) -> Callable[[dict], bytes]:
    """SSE bytes of a chunk; with vLLM's continuous_usage_stats each chunk carries the usage so far, so a proxy
    knows the prompt's size from the first chunk on."""
    def emit(chunk: dict) -> bytes:
        if continuous:
            chunk["usage"] = R.usage(job.prompt_tokens, list(choices.values()))
        return R.sse(chunk)
    return emit


async def _stream_completion(job: Job, env: R.Envelope, codec, echo_texts: list[str] | None, want_lp: bool,
                             include_usage: bool, continuous: bool = False) -> AsyncIterator[bytes]:
    choices = {i: R.Choice(i) for i in range(job.n_choices)}
    emit = _emitter(job, choices, continuous)
    if echo_texts is not None and not want_lp:  # the prompt's logits are computed only when logprobs ask for them
        for i in range(job.n_choices):
            yield emit(R.completion_chunk(env, i, echo_texts[i], None, None, include_usage))
    async for event in job.events():
        if isinstance(event, ErrorEvent):
            yield R.sse(error_envelope(event.message, "server_error"))
            yield R.DONE
            return
        R.apply_event(choices, event)
        if isinstance(event, PromptEvent) and echo_texts is not None:  # echo with logprobs: the prompt first
            lp = R.legacy_logprobs(codec, event.token_ids, event.logprobs, event.top_logprobs)
            for i in range(event.index, event.index + event.count):
                yield emit(R.completion_chunk(env, i, echo_texts[i], lp, None, include_usage))
        elif event.finish_reason:
            yield emit(R.completion_chunk(env, event.index, "", None, event.finish_reason, include_usage))
        elif event.text or want_lp:
            lp = None
            if want_lp:
                lp = R.legacy_logprobs(codec, [event.token_id], [event.logprob], [event.top_logprobs],
                                       offset=len(choices[event.index].text) - len(event.text))
            yield emit(R.completion_chunk(env, event.index, event.text, lp, None, include_usage))
    if include_usage:
        yield R.sse({**env.head("text_completion"), "choices": [],
                     "usage": R.usage(job.prompt_tokens, list(choices.values()))})
    yield R.DONE


async def _stream_chat(job: Job, env: R.Envelope, codec, want_lp: bool, include_usage: bool,
                       tools: ToolUse | None = None, continuous: bool = False) -> AsyncIterator[bytes]:
    choices = {i: R.Choice(i) for i in range(job.n_choices)}
    emit = _emitter(job, choices, continuous)
    calls = {i: ToolCallStream(tools) for i in range(job.n_choices)} if tools else {}
    for i in range(job.n_choices):
        yield emit(R.chat_chunk(env, i, {"role": "assistant", "content": ""}, None, None, include_usage))
    async for event in job.events():
        if isinstance(event, ErrorEvent):
            yield R.sse(error_envelope(event.message, "server_error"))
            yield R.DONE
            return
        R.apply_event(choices, event)
        if isinstance(event, PromptEvent):
            continue
        parser = calls.get(event.index)
        if event.finish_reason:
            finish = event.finish_reason
            if parser:
                for delta in parser.finish(truncated=finish == "length"):
                    yield emit(R.chat_chunk(env, event.index, delta, None, None, include_usage))
                finish = "tool_calls" if parser.calls and finish == "stop" else finish
            yield emit(R.chat_chunk(env, event.index, {}, None, finish, include_usage))
        elif event.text or want_lp:
            lp = R.chat_logprobs(codec, [event.token_id], [event.logprob], [event.top_logprobs]) if want_lp else None
            deltas = parser.feed(event.text) if parser else [{"content": event.text}]
            for k, delta in enumerate(deltas or ([{"content": ""}] if lp else [])):
                yield emit(R.chat_chunk(env, event.index, delta, lp if k == 0 else None, None, include_usage))
    if include_usage:
        yield R.sse({**env.head("chat.completion.chunk"), "choices": [],
                     "usage": R.usage(job.prompt_tokens, list(choices.values()))})
    yield R.DONE
