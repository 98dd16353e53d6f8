"""The HTTP server: OpenAI-compatible, llama.cpp /infill and Tabby-style completion on one model.

Every request body is read with a size limit and validated; a bad request gets a 4xx JSON error
naming the field, a full queue a 503 with Retry-After. Work runs on the scheduler's worker thread;
a client that disconnects cancels its generation between two tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from codegemma.complete.chat import chat_prompt, run_chat
from codegemma.complete.pipeline import Completer, Completion, CompletionRequest
from codegemma.engine import SamplingParams
from codegemma.errors import CodegemmaError
from codegemma.serve import schemas
from codegemma.serve.metrics import Metrics
from codegemma.serve.scheduler import Job, QueueFull, Scheduler

log = logging.getLogger(__name__)


@dataclass
class ServerSettings:
    max_queue: int = 32
    max_batch: int = 8
    request_timeout_s: float = 60.0
    max_request_bytes: int = 2_000_000
    retry_after_s: int = 2


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.headers = status, message, param, kind, headers


def error_body(message: str, param: str | None = None, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def sse(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class Observe:
    """Pure ASGI middleware: counts every response by endpoint and status, and answers an unexpected
    exception with a JSON 500 itself.

    Not Starlette's @app.middleware("http"): that wraps the request so that
    `request.is_disconnected()` never turns true, and a client hanging up on a non-streaming
    request would not cancel its generation. Nor Starlette's own 500: it re-raises after
    answering, so the server drops the client's keep-alive connection and no status is counted.
    """

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        started = False

        async def observed(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                route = scope.get("route")  # set by the router on this same scope
                endpoint = route.path if route is not None else "unmatched"
                self.metrics.requests.labels(endpoint=endpoint, status=str(message["status"])).inc()
                self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - t0)
            await send(message)

        try:
            await self.app(scope, receive, observed)
        except Exception as exc:
            if started:  # half a response cannot be mended: let the server log it and close
                raise
            log.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
            response = JSONResponse(error_body(f"internal error: {type(exc).__name__}", None, "server_error"),
                                    status_code=500)
            await response(scope, receive, observed)


def create_app(completer: Completer, model_name: str, settings: ServerSettings = ServerSettings()) -> FastAPI:
    metrics = Metrics()
    scheduler = Scheduler(completer, settings.max_queue, settings.max_batch, on_batch=metrics.batch_size.observe)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        scheduler.close()

    app = FastAPI(title="codegemma", version="0.1.0", lifespan=lifespan)
    metrics.queue_depth.set_function(lambda: scheduler.depth)
    app.state.scheduler, app.state.metrics, app.state.settings = scheduler, metrics, settings
    profile = completer.profile
    created = int(time.time())

    # ---- errors ---------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(error_body(exc.message, exc.param, exc.kind), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse(error_body(str(exc.detail), None, "not_found_error" if exc.status_code == 404
                                       else "invalid_request_error"), status_code=exc.status_code)

    app.add_middleware(Observe, metrics=metrics)

    # ---- plumbing --------------------------------------------------------------------------
    async def read_json(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_request_bytes:
            raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {settings.max_request_bytes}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_request_bytes:
                raise ApiError(413, f"request body exceeds the limit of {settings.max_request_bytes} bytes")
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, f"request body is not valid JSON ({exc})", "body") from None
        except ValueError:  # an integer of thousands of digits, which Python refuses to convert
            raise ApiError(400, "request body holds a number too long to read", "body") from None
        except RecursionError:
            raise ApiError(400, "request body is nested too deeply", "body") from None
        if not isinstance(data, dict):
            raise ApiError(400, "request body must be a JSON object", "body")
        return data

    def validate(model: type[BaseModel], data: dict) -> Any:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            field, message = schemas.describe_error(exc)
            raise ApiError(400, f"{field}: {message}", field) from None

    def new_job(work, streaming: bool, batch_request: CompletionRequest | None = None) -> Job:
        job = Job(work=work, loop=asyncio.get_running_loop(), deadline=time.monotonic() + settings.request_timeout_s,
                  streaming=streaming, batch_request=batch_request)
        try:
            scheduler.submit(job)
        except QueueFull:
            metrics.rejected.inc()
            raise ApiError(503, "the server is busy: the request queue is full", None, "server_busy",
                           headers={"Retry-After": str(settings.retry_after_s)}) from None
        return job

    def raise_for(exc: BaseException):
        if isinstance(exc, CodegemmaError):
            raise ApiError(400, str(exc))
        if isinstance(exc, TimeoutError):
            raise ApiError(503, str(exc), None, "timeout", headers={"Retry-After": str(settings.retry_after_s)})
        raise exc

    def started_too_late(job: Job, value: Any) -> bool:
        """Whether the request's own deadline passed before its first token (a long queue or prefill):
        there is nothing to return, and the client should retry as for a request timed out in the queue."""
        results = value if isinstance(value, list) else [value]
        return time.monotonic() > job.deadline and all(
            r.finish_reason == "time_limit" and r.generated_tokens == 0 for r in results)

    too_late = "the request timed out before generation started"

    async def wait(request: Request, job: Job) -> Any:
        """The job's result; cancels it if the client goes away first (then returns None)."""
        while True:
            try:
                kind, value = await asyncio.wait_for(job.events.get(), timeout=0.25)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel()
                    metrics.cancelled.inc()
                    return None
                continue
            if kind == "done":
                if started_too_late(job, value):
                    raise_for(TimeoutError(too_late))
                return value
            if kind == "error":
                if isinstance(value, asyncio.CancelledError):
                    return None
                raise_for(value)

    def stream_error(exc: BaseException) -> dict:
        """The SSE event for a failure after the 200 went out (client mistakes are found before it)."""
        if isinstance(exc, CodegemmaError):
            return error_body(str(exc))
        if isinstance(exc, TimeoutError):
            return error_body(str(exc), None, "timeout")
        log.error("internal error in a streamed response", exc_info=exc)
        return error_body(f"internal error: {type(exc).__name__}", None, "server_error")

    async def stream_events(job: Job, chunk: Callable[[str], Any], final: Callable[[Any], list[Any]],
                            done_marker: bool = True) -> AsyncIterator[str]:
        finished = False
        try:
            while True:
                kind, value = await job.events.get()
                if kind == "delta":
                    yield sse(chunk(value))
                    continue
                finished = True
                if kind == "done" and started_too_late(job, value):
                    kind, value = "error", TimeoutError(too_late)
                if kind == "done":
                    for payload in final(value):
                        yield sse(payload)
                    if done_marker:
                        yield "data: [DONE]\n\n"
                elif not isinstance(value, asyncio.CancelledError):
                    yield sse(stream_error(value))
                return
        finally:
            if not finished:  # the client went away mid-stream
                job.cancel()
                metrics.cancelled.inc()

    async def check(req: CompletionRequest):
        """Builds the prompt before a stream starts, so that a request the pipeline refuses gets its
        400 as it would without streaming, not a 200 and an error event."""
        try:
            await run_in_threadpool(completer.prepare, req)
        except CodegemmaError as exc:
            raise ApiError(400, str(exc)) from None

    def record(c: Completion):
        metrics.prompt_tokens.inc(c.prompt_tokens)
        metrics.cached_tokens.inc(c.cached_tokens)
        metrics.generated_tokens.inc(c.generated_tokens)

    def sse_response(gen: AsyncIterator[str]) -> StreamingResponse:
        return StreamingResponse(gen, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    def completion_work(req: CompletionRequest):
        return lambda on_delta, cancel, deadline: completer.run(req, on_delta, cancel, deadline)

    def recorded(c: Completion) -> Completion:
        record(c)
        return c

    def nth_seed(seed: int | None, i: int) -> int | None:
        # the choices of one request differ; each is reproducible from the request's seed
        return None if seed is None else seed + i

    def usage(prompt_tokens: int, completion_tokens: int) -> dict:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    # ---- routes ----------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "profile": profile.name, "queue_depth": scheduler.depth}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "codegemma", "profile": profile.describe()}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        data = await read_json(request)
        if "segments" in data:
            return await tabby_completion(request, validate(schemas.TabbyCompletion, data))
        body: schemas.OpenAICompletion = validate(schemas.OpenAICompletion, data)
        prompts = body.prompts()
        if len(prompts) * body.n > schemas.MAX_CHOICES:
            raise ApiError(400, f"n: {body.n} choices for each of {len(prompts)} prompts is more than "
                                f"{schemas.MAX_CHOICES} completions", "n")
        if body.stream and body.n > 1:
            raise ApiError(400, "n: streaming supports n = 1 only", "n")
        if body.stream and len(prompts) > 1:
            raise ApiError(400, "prompt: streaming supports one prompt only; send one string", "prompt")
        reqs = [CompletionRequest(prefix=prompt, suffix=body.suffix or "", max_new_tokens=body.max_tokens,
                                  temperature=body.temperature, top_p=body.top_p, seed=body.seed,
                                  stop=schemas.stops(body.stop)) for prompt in prompts]
        cid = f"cmpl-{uuid.uuid4().hex}"

        def choice(c: Completion, index: int) -> dict:
            return {"index": index, "text": c.text, "logprobs": None,
                    "finish_reason": "length" if c.finish_reason in ("length", "time_limit") else "stop"}

        def envelope(choices: list[dict], usage: dict | None = None) -> dict:
            out = {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model_name,
                   "choices": choices}
            if usage is not None:
                out["usage"] = usage
            return out

        def total(cs: list[Completion]) -> dict:
            # the prompt counts once per prompt, not once per choice (the n choices of a prompt are together)
            return usage(sum(c.prompt_tokens for c in cs[::body.n]), sum(c.generated_tokens for c in cs))

        if body.stream:
            await check(reqs[0])
            job = new_job(completion_work(reqs[0]), streaming=True)
            return sse_response(stream_events(
                job, lambda text: envelope([{"index": 0, "text": text, "logprobs": None, "finish_reason": None}]),
                lambda c: [envelope([{**choice(recorded(c), 0), "text": ""}], total([c]))]))
        if len(reqs) == 1 and body.n == 1:
            job = new_job(completion_work(reqs[0]), streaming=False, batch_request=reqs[0])
            result = await wait(request, job)
            if result is None:
                return Response(status_code=499)
            record(result)
            return envelope([choice(result, 0)], total([result]))

        def several(on_delta, cancel, deadline):
            # OpenAI's order: prompt by prompt, the n choices of each prompt together
            outs = []
            for req in reqs:
                for i in range(body.n):
                    if cancel():
                        return outs
                    outs.append(recorded(completer.run(replace(req, seed=nth_seed(req.seed, i)), None, cancel,
                                                       deadline)))
            return outs

        results = await wait(request, new_job(several, streaming=False))
        if results is None:
            return Response(status_code=499)
        return envelope([choice(c, i) for i, c in enumerate(results)], total(results))

    async def tabby_completion(request: Request, body: schemas.TabbyCompletion):
        seg = body.segments
        context = [(s.filepath, s.body) for group in (seg.declarations, seg.relevant_snippets_from_changed_files,
                                                      seg.relevant_snippets_from_recently_opened_files)
                   for s in (group or [])]
        req = CompletionRequest(prefix=seg.prefix, suffix=seg.suffix or "", path=seg.filepath, language=body.language,
                                context=context, temperature=body.temperature, seed=body.seed)
        result = await wait(request, new_job(completion_work(req), streaming=False, batch_request=req))
        if result is None:
            return Response(status_code=499)
        record(result)
        return {"id": f"cmpl-{uuid.uuid4()}", "choices": [{"index": 0, "text": result.text}], "mode": "standard",
                "completion_mode": result.mode}

    @app.post("/infill")
    async def infill(request: Request):
        body: schemas.Infill = validate(schemas.Infill, await read_json(request))
        req = CompletionRequest(
            prefix=body.input_prefix, suffix=body.input_suffix, path=body.filename,
            context=[(c.filename, c.text) for c in body.input_extra], middle_start=body.prompt,
            max_new_tokens=None if body.n_predict < 0 else body.n_predict, stop=body.stop,
            temperature=body.temperature, top_k=body.top_k, top_p=body.top_p, seed=body.seed,
            min_indent=body.n_indent,
            predict_time_limit_s=None if not body.t_max_predict_ms else body.t_max_predict_ms / 1000)

        def final(c: Completion, content: str | None = None) -> dict:
            return {
                "content": c.text if content is None else content, "stop": True, "stop_type": c.stop_type,
                "stopping_word": "", "model": model_name, "mode": c.mode, "tokens_cached": c.cached_tokens,
                "tokens_evaluated": c.evaluated_tokens, "tokens_predicted": c.generated_tokens,
                "truncated": c.truncated,
                "timings": {"prompt_n": c.evaluated_tokens, "prompt_ms": round(c.prompt_ms, 3),
                            "prompt_per_second": c.evaluated_tokens / (c.prompt_ms / 1000) if c.prompt_ms else None,
                            "predicted_n": c.generated_tokens, "predicted_ms": round(c.predicted_ms, 3),
                            "predicted_per_second": (c.generated_tokens / (c.predicted_ms / 1000)
                                                     if c.predicted_ms else None)}}

        if body.stream:
            await check(req)
            job = new_job(completion_work(req), streaming=True)
            return sse_response(stream_events(job, lambda text: {"content": text, "stop": False},
                                              lambda c: [final(recorded(c), "")], done_marker=False))
        # a request with a time limit runs alone: a batch generates every row to its token limit
        batch = req if req.predict_time_limit_s is None else None
        result = await wait(request, new_job(completion_work(req), streaming=False, batch_request=batch))
        if result is None:
            return Response(status_code=499)
        return final(recorded(result))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body: schemas.OpenAIChat = validate(schemas.OpenAIChat, await read_json(request))
        if profile.chat_template is None:
            raise ApiError(400, f"model profile {profile.name!r} has no chat template", "messages")
        if body.stream and body.n > 1:
            raise ApiError(400, "n: streaming supports n = 1 only", "n")
        sampling = profile.chat_sampling
        # 0 is a valid limit (an empty reply), so only a missing field takes the default
        max_new = next((m for m in (body.max_completion_tokens, body.max_tokens) if m is not None),
                       sampling.max_new_tokens)
        params = SamplingParams(
            max_new_tokens=max_new, temperature=sampling.temperature if body.temperature is None else body.temperature,
            top_k=sampling.top_k, top_p=sampling.top_p if body.top_p is None else body.top_p,
            repetition_penalty=sampling.repetition_penalty, seed=body.seed, stop_ids=profile.stop_ids)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        stop = schemas.stops(body.stop)
        cid = f"chatcmpl-{uuid.uuid4().hex}"

        # checked before a stream's 200 goes out: a conversation too long is the client's mistake
        try:
            prompt_tokens = len(await run_in_threadpool(chat_prompt, completer, messages))
        except CodegemmaError as exc:
            raise ApiError(400, str(exc), "messages") from None
        context = completer.engine.config.max_seq_len
        if prompt_tokens + max_new > context:
            raise ApiError(400, f"messages ({prompt_tokens} tokens) + max_tokens ({max_new}) exceed the model's "
                                f"context of {context} tokens", "messages")

        def work(on_delta, cancel, deadline):
            replies = []
            for i in range(body.n):
                if cancel():
                    break
                reply = run_chat(completer, messages, replace(params, seed=nth_seed(body.seed, i)), stop, on_delta,
                                 cancel, deadline)
                metrics.prompt_tokens.inc(reply.prompt_tokens)
                metrics.cached_tokens.inc(reply.cached_tokens)
                metrics.generated_tokens.inc(reply.generated_tokens)
                replies.append(reply)
            return replies

        def finish(reason: str) -> str:
            return "length" if reason in ("length", "time_limit") else "stop"

        def total(replies) -> dict:
            return usage(prompt_tokens, sum(r.generated_tokens for r in replies))

        def chunk(delta: dict, reason: str | None = None) -> dict:
            return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model_name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}

        if body.stream:
            job = new_job(work, streaming=True)

            def final(replies) -> list[dict]:
                out = [chunk({}, finish(replies[0].finish_reason))]
                if body.include_usage:  # OpenAI's shape: one more chunk, with no choices
                    out.append({**chunk({}), "choices": [], "usage": total(replies)})
                return out

            async def events():
                yield sse(chunk({"role": "assistant", "content": ""}))
                async for event in stream_events(job, lambda text: chunk({"content": text}), final):
                    yield event
            return sse_response(events())
        replies = await wait(request, new_job(work, streaming=False))
        if replies is None:
            return Response(status_code=499)
        return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model_name,
                "choices": [{"index": i, "message": {"role": "assistant", "content": r.text},
                             "finish_reason": finish(r.finish_reason)} for i, r in enumerate(replies)],
                "usage": total(replies)}

    return app
