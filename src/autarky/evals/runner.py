"""`eval run`: every item of every suite against every model endpoint, with bounded concurrency, retries and
resume. Each finished item is written to the store as soon as it is graded, so an interrupted run loses at most
the requests in flight; the next run skips items already stored with status "ok".
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import Engine, and_, delete, select

from autarky.evals import formats
from autarky.evals.client import Client, Endpoint, EndpointError, Reply
from autarky.evals.graders import Grade, get_grader
from autarky.evals.suite import Suite
from autarky.store.database import open_store
from autarky.store.eval_tables import eval_models, eval_results, eval_suites


@dataclass
class EvalModel:
    """A model under evaluation: its endpoint, list prices, in-house flag and provider."""

    endpoint: Endpoint
    usd_in_per_1m: float = 0.0
    usd_out_per_1m: float = 0.0
    in_house: bool = False
    provider: str = ""

    @property
    def name(self) -> str:
        return self.endpoint.name


@dataclass
class RunOptions:
    concurrency: int = 4
    limit: int | None = None  # first N items of each suite (for demos)
    retries: int = 3
    timeout_s: float = 300.0
    fresh: bool = False  # forget stored results of these (model, suite) pairs first
    max_tokens_cap: int | None = None  # cap every suite's max_tokens (slow CPU demos; can cost points)
    progress: bool = True


@dataclass
class EvalRunSummary:
    done: int = 0  # items graded in this run
    skipped: int = 0  # items already finished in the store
    errors: int = 0  # items whose requests failed after retries (retried by the next run)
    grader_failures: int = 0
    requests_sent: int = 0
    messages: list[str] = field(default_factory=list)


def run_eval(suites: list[Suite], models: list[EvalModel], store_url: str | None = None,
             options: RunOptions | None = None) -> EvalRunSummary:
    """Run every suite against every model; returns counts. Raises UserError for unreachable endpoints."""
    engine = open_store(store_url)
    return asyncio.run(_run(engine, suites, models, options or RunOptions()))


async def _run(engine: Engine, suites: list[Suite], models: list[EvalModel], options: RunOptions) -> EvalRunSummary:
    client = Client(timeout_s=options.timeout_s, retries=options.retries)
    summary = EvalRunSummary()
    try:
        for spec in models:
            await client.check(spec.endpoint)
        _record_setup(engine, suites, models)
        semaphore = asyncio.Semaphore(max(1, options.concurrency))
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            disable=not options.progress, transient=False,
        ) as progress:
            jobs = []
            for spec in models:
                for suite in suites:
                    if options.fresh:
                        with engine.begin() as conn:
                            conn.execute(delete(eval_results).where(
                                and_(eval_results.c.model == spec.name, eval_results.c.suite == suite.name)))
                    finished = _finished(engine, spec.name, suite.name)
                    items = [it for it in suite.limited(options.limit) if finished.get(it["id"]) != item_sha(it)]
                    summary.skipped += len(suite.limited(options.limit)) - len(items)
                    bar = progress.add_task(f"{spec.name} · {suite.name}", total=len(items))
                    for item in items:
                        jobs.append(_one(engine, client, semaphore, spec, suite, item, summary, progress, bar, options))
            await asyncio.gather(*jobs)
    finally:
        summary.requests_sent = client.requests_sent
        await client.aclose()
    return summary


async def _one(engine: Engine, client: Client, semaphore: asyncio.Semaphore, spec: EvalModel, suite: Suite,
               item: dict[str, Any], summary: EvalRunSummary, progress: Progress, bar: Any, options: RunOptions) -> None:
    async with semaphore:
        status, error, grade, output = "ok", "", Grade(0.0), ""
        try:
            reply = await _ask(client, spec.endpoint, suite, item, options.max_tokens_cap)
        except EndpointError as exc:
            reply = Reply("")
            error = str(exc)
            status = "ok" if exc.final else "error"  # a 400 for this item is final; a dead server is retried
            summary.errors += status == "error"
            if suite.checks_format:  # e.g. an endpoint that refuses tools: its format is not valid either
                grade.metrics["format_valid"] = 0.0
        else:
            grader = get_grader(suite.config.grader)
            output = answer_output(suite, reply)
            try:
                grade = await asyncio.to_thread(grader.grade, item, output, reply.extras)
            except Exception as exc:  # noqa: BLE001 - a grader crash is this item's failure, never the run's
                error = f"grader {suite.config.grader!r} failed: {type(exc).__name__}: {exc}"
                summary.grader_failures += 1
            if suite.checks_format and "format_valid" not in grade.metrics:
                problem = format_problem(suite, item, output)
                grade.metrics["format_valid"] = float(problem is None)
                grade.detail = f"{grade.detail}; format: {problem}" if problem else grade.detail
        cost = (reply.prompt_tokens * spec.usd_in_per_1m + reply.completion_tokens * spec.usd_out_per_1m) / 1e6
        row = {
            "model": spec.name, "suite": suite.name, "item_id": item["id"], "item_sha": item_sha(item), "status": status,
            "score": float(grade.score), "metrics": json.dumps(grade.metrics),
            "prompt": str(item["prompt"]), "output": output, "detail": grade.detail, "error": error,
            "latency_ms": reply.latency_ms, "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens, "cost_usd": cost, "created_at": datetime.now(UTC),
        }
        with engine.begin() as conn:
            conn.execute(delete(eval_results).where(and_(
                eval_results.c.model == spec.name, eval_results.c.suite == suite.name,
                eval_results.c.item_id == item["id"])))
            conn.execute(eval_results.insert().values(**row))
        summary.done += status == "ok"
        progress.advance(bar)


async def _ask(client: Client, endpoint: Endpoint, suite: Suite, item: dict[str, Any], cap: int | None) -> Reply:
    cfg = suite.config
    max_tokens = min(cfg.max_tokens, cap or cfg.max_tokens)
    if cfg.kind != "loglikelihood":
        tools = item["tools"] if "tools" in cfg.needs else None

        def ask(tokens: int) -> Awaitable[Reply]:
            return client.generate(endpoint, item["prompt"], system=cfg.system, max_tokens=tokens,
                                   temperature=cfg.temperature, stop=cfg.stop or None, tools=tools,
                                   tool_choice=item.get("tool_choice", "auto"), response_format=suite.response_format())

        try:
            return await ask(max_tokens)
        except EndpointError as exc:
            # A short-context model gets less room to answer rather than a cut instruction; if even the
            # instruction does not fit, the item is this model's failure.
            overflow = exc.context_overflow
            room = max_tokens - (overflow[1] - overflow[0]) if overflow else 0
            if room < 1:
                raise
            return await ask(room)
    # Likelihood of the reference continuation, then a greedy continuation whose first non-blank line is compared
    # (no stop sequence: a body may begin with a blank line). Both need /completions. A model with a
    # short context sees the prompt cut from the left (as lm-evaluation-harness truncates), never the body.
    scored = await _fit_context(item["prompt"], lambda ctx: client.continuation_logprob(endpoint, ctx, item["body"]),
                                len(item["body"]))
    line = await _fit_context(item["prompt"], lambda ctx: client.generate(
        endpoint, ctx, max_tokens=max_tokens, temperature=0.0, mode="completions"), 0)
    return Reply(line.text, scored.prompt_tokens + line.prompt_tokens, scored.completion_tokens + line.completion_tokens,
                 scored.latency_ms + line.latency_ms, scored.extras)


async def _fit_context(context: str, call: Callable[[str], Awaitable[Reply]], tail_chars: int) -> Reply:
    """Call with `context`; on a context-length error, drop enough characters from its left and try again."""
    for _attempt in range(4):
        try:
            return await call(context)
        except EndpointError as exc:
            overflow = exc.context_overflow
            if overflow is None:
                raise
            limit, asked = overflow
            chars = len(context) + tail_chars
            need = math.ceil((asked - limit) * chars / asked) if asked > limit else len(context) // 2
            if need >= len(context):
                raise  # even the continuation alone does not fit
            context = context[min(len(context) - 1, math.ceil(need * 1.1) + 4):]
    return await call(context)


def answer_output(suite: Suite, reply: Reply) -> str:
    """What is stored and graded: the text, or for a tools suite the envelope of the wire's calls (formats)."""
    return formats.encode_calls(reply.text, reply.tool_calls) if "tools" in suite.config.needs else reply.text


def format_problem(suite: Suite, item: dict[str, Any], output: str) -> str | None:
    """Why an answer is not in the format its suite asked for (a call of a declared tool, schema-valid JSON)."""
    if "tools" in suite.config.needs:
        return formats.calls_problem(output, item["tools"])
    if suite.response_schema is not None:
        return formats.json_problem(output, suite.response_schema)
    return None


def item_sha(item: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(item, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def _finished(engine: Engine, model: str, suite: str) -> dict[str, str]:
    """item id → sha of the item version that was graded, for items finished with status "ok"."""
    with engine.connect() as conn:
        rows = conn.execute(select(eval_results.c.item_id, eval_results.c.item_sha).where(and_(
            eval_results.c.model == model, eval_results.c.suite == suite, eval_results.c.status == "ok")))
        return dict(rows.all())


def _record_setup(engine: Engine, suites: list[Suite], models: list[EvalModel]) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for suite in suites:
            c = suite.config
            conn.execute(delete(eval_suites).where(eval_suites.c.name == c.name))
            conn.execute(eval_suites.insert().values(name=c.name, task=c.task, kind=c.kind, grader=c.grader,
                                                     metric=c.metric, source=suite.source))
        for spec in models:
            conn.execute(delete(eval_models).where(eval_models.c.name == spec.name))
            conn.execute(eval_models.insert().values(
                name=spec.name, base_url=spec.endpoint.base_url, provider=spec.provider, in_house=spec.in_house,
                usd_in_per_1m=spec.usd_in_per_1m, usd_out_per_1m=spec.usd_out_per_1m, updated_at=now))
