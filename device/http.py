"""`coinfer device --http HOST:PORT`: the device half as a local OpenAI-compatible HTTP service.

Applications on the device call it as they would call OpenAI (or TEI, vLLM, Ollama):

    POST /v1/embeddings    input: a string, a list of strings, a list of token ids, or a list of lists
                           of token ids; encoding_format float (default) or base64; L2-normalised vectors
    POST /v1/completions   BART: prompt (a string or a list) -> choices[].text; max_tokens
    GET  /v1/models        the one model served
    GET  /health           200 while the server answers its Info, else 503 (needs no token)
    GET  /metrics          Prometheus: requests by endpoint and status, latency

Every answer says what produced it: /v1/embeddings and /v1/completions carry a top-level "coinfer"
object (plan_epoch, k, rho_device, rho_server, prune_method, codec, predicted_quality, clock, ...; OpenAI
clients ignore unknown fields) and the header X-Coinfer-Plan-Epoch.

Errors come as OpenAI's error object ``{"error": {"message", "type", "param", "code"}}`` with the
HTTP status: 400 bad input, 401 no or wrong token, 404 unknown model, 413 too many inputs, 503 server
unreachable, 500 anything else. Every request shares one SplitModel: the blocking calls run in worker
threads, so concurrent requests overlap and share the device's one stream to the server. With a token
(--token / COINFER_TOKEN) every endpoint but /health requires ``Authorization: Bearer <token>``, which
is what the openai client sends with ``api_key=<token>``; with --tls-cert and --tls-key it serves HTTPS.
"""
# (no `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time)

import base64
import logging
import time
import uuid
import queue
import threading
from concurrent.futures import Future

log = logging.getLogger(__name__)

MAX_INPUTS = 100_000      # inputs in one request; more is refused (413)
CHUNK = 64                # sequences per request to the server (the server accepts at most 256)
HEALTH_TIMEOUT_S = 2.0
_STOP = object()


class ApiError(Exception):
    """An error answered as OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def _error_response(exc: ApiError):
    from fastapi.responses import JSONResponse

    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def _from_exception(exc: BaseException) -> ApiError:
    """What a failure underneath means to an HTTP client."""
    import grpc

    from coinfer.device.client import InferenceError
    from coinfer.errors import UsageError

    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, UsageError):
        return ApiError(400, str(exc), code="invalid_request")
    if isinstance(exc, InferenceError):
        if exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return ApiError(503, f"server unreachable: {exc.message}", code="server_unavailable",
                            kind="server_error")
        if exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return ApiError(503, f"server busy: {exc.message}", code="server_busy", kind="server_error")
        return ApiError(500, f"server refused the request ({exc.code.name}): {exc.message}",
                        code=exc.code.name.lower(), kind="server_error")
    log.exception("unexpected error")
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error", kind="server_error")


# --- inputs --------------------------------------------------------------------------------------
def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_input(value, field: str = "input"):
    """('text', [str, ...]) or ('tokens', [[int, ...], ...]) from OpenAI's `input` / `prompt`."""
    if isinstance(value, str):
        if not value:
            raise ApiError(400, f"'{field}' is an empty string", field)
        return "text", [value]
    if not isinstance(value, list):
        raise ApiError(400, f"'{field}' must be a string, a list of strings, a list of token ids or a list of "
                            f"lists of token ids, not {type(value).__name__}", field)
    if not value:
        raise ApiError(400, f"'{field}' is an empty list", field)
    if len(value) > MAX_INPUTS:
        raise ApiError(413, f"'{field}' holds {len(value)} inputs; at most {MAX_INPUTS} in one request", field,
                       code="too_many_inputs")
    first = value[0]
    if isinstance(first, str):
        for i, text in enumerate(value):
            if not isinstance(text, str):
                raise ApiError(400, f"'{field}[{i}]' is {type(text).__name__}; a list of strings holds only strings",
                               field)
            if not text:
                raise ApiError(400, f"'{field}[{i}]' is an empty string", field)
        return "text", list(value)
    if _is_int(first):
        for i, token in enumerate(value):
            if not _is_int(token):
                raise ApiError(400, f"'{field}[{i}]' is {type(token).__name__}; a token array holds only integers",
                               field)
        return "tokens", [list(value)]
    if isinstance(first, list):
        for i, row in enumerate(value):
            if not isinstance(row, list) or not row:
                raise ApiError(400, f"'{field}[{i}]' must be a non-empty list of token ids", field)
            for j, token in enumerate(row):
                if not _is_int(token):
                    raise ApiError(400, f"'{field}[{i}][{j}]' is {type(token).__name__}, not a token id", field)
        return "tokens", [list(row) for row in value]
    raise ApiError(400, f"'{field}[0]' is {type(first).__name__}: give strings or token ids", field)


# --- the service ---------------------------------------------------------------------------------
class EmbeddingJob:
    """One /v1/embeddings request cut into chunks (indices into `items`, longest first); the answers of
    the chunks are gathered into vectors in input order."""

    def __init__(self, model_name: str, kind: str, items: list, fmt: str, chunks: list[list[int]]):
        self.model_name, self.kind, self.items, self.fmt, self.chunks = model_name, kind, items, fmt, chunks
        self.vectors: list = [None] * len(items)
        self.tokens = 0
        self._plans: list = []

    def rows(self, indices: list[int]) -> list:
        return [self.items[i] for i in indices]

    def add(self, indices: list[int], answer) -> None:
        count, output, plan = answer
        self.tokens += count
        self._plans.append(plan)
        for row, i in enumerate(indices):
            self.vectors[i] = output[row]

    def plan(self) -> dict:
        from coinfer.device.runtime import merge_plan_infos

        return merge_plan_infos(self._plans)

    def answer(self) -> dict:
        import numpy as np

        data = []
        for i, vector in enumerate(self.vectors):
            if self.fmt == "base64":
                value = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
            else:
                value = vector.tolist()
            data.append({"object": "embedding", "index": i, "embedding": value})
        return {"object": "list", "data": data, "model": self.model_name,
                "usage": {"prompt_tokens": self.tokens, "total_tokens": self.tokens}, "coinfer": self.plan()}


class Service:
    """What the endpoints do, over one SplitModel (blocking calls: run them in worker threads)."""

    def __init__(self, model, spec: str, chunk: int = CHUNK):
        self.model = model
        self.runtime = model.runtime
        self.src = self.runtime.src
        self.spec = spec
        self.chunk = chunk
        self.created = int(time.time())
        self.names = {self.src.name, spec}
        # Every torch call runs on one thread: libgomp gives each thread that computes a pool of its
        # own, and more pools than cores make every op sleep and wake (see coinfer.openmp). Requests
        # queue there chunk by chunk: chunks of concurrent requests that wait together are sent as one
        # batch (up to `chunk` sequences), and none waits behind the whole of a long request.
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._compute_loop, name="coinfer-device-compute", daemon=True)
        self._thread.start()

    def on_compute_thread(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) on the compute thread (not batched with anything)."""
        return self.submit("call", (fn, args, kwargs)).result()

    def submit(self, kind: str, items) -> Future:
        """Queue rows for the compute thread; the future gives (tokens, rows, plan_info)."""
        future: Future = Future()
        self._jobs.put((kind, items, future))
        return future

    def _compute_loop(self) -> None:
        pending = None
        while True:
            job, pending = (pending if pending is not None else self._jobs.get()), None
            if job is _STOP:
                return
            kind, items, future = job
            if kind == "call":
                fn, args, kwargs = items
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:
                    future.set_exception(exc)
                continue
            group, total = [job], len(items)
            while total < self.chunk:
                try:
                    other = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if other is _STOP or other[0] != kind or total + len(other[1]) > self.chunk:
                    pending = other
                    break
                group.append(other)
                total += len(other[1])
            try:
                counts, output, plan = self._embed_batch(kind, [x for _, rows, _ in group for x in rows])
            except BaseException as exc:
                for _, _, f in group:
                    f.set_exception(exc)
                continue
            start = 0
            for _, rows, f in group:
                f.set_result((int(counts[start:start + len(rows)].sum()), output[start:start + len(rows)], plan))
                start += len(rows)

    def close(self) -> None:
        self._jobs.put(_STOP)
        self._thread.join(timeout=30)

    @property
    def name(self) -> str:
        return self.src.name

    def check_model(self, requested) -> None:
        if requested is None:
            return
        if not isinstance(requested, str) or requested not in self.names:
            raise ApiError(404, f"The model {requested!r} does not exist: this service serves {self.name!r}",
                           "model", "model_not_found")

    def models(self) -> dict:
        return {"object": "list", "data": [self.model_card()]}

    def model_card(self) -> dict:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "coinfer"}

    def health(self) -> tuple[bool, dict]:
        from coinfer.protos import coinfer_pb2 as pb

        runtime = self.runtime
        try:
            info = runtime.client.stub.Info(pb.InfoRequest(), timeout=HEALTH_TIMEOUT_S)
        except Exception as exc:  # grpc.RpcError and anything else: not healthy
            detail = getattr(exc, "details", lambda: str(exc))() or str(exc)
            return False, {"status": "unavailable", "server": runtime.client.address, "error": detail}
        return True, {"status": "ok", "model": self.name, "server": runtime.client.address,
                      "split": runtime.split, "epoch": runtime.epoch, "server_model": info.model_id}

    # embeddings
    def _token_batch(self, rows: list[list[int]]):
        import torch

        width = max(len(r) for r in rows)
        pad = self.src.tokenizer.pad_token_id or 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, :len(row)] = 1
        return ids, mask

    def _embed_batch(self, kind: str, rows: list):
        """(tokens of each row, normalised float32 rows, the plan_info that produced them) of one request to
        the server (compute thread)."""
        import torch

        if kind == "tokens":
            ids, mask = self._token_batch(rows)
        else:
            ids, mask = self.runtime.tokenize(rows)
        result = self.runtime.infer_tokens(ids, mask)
        output = result.output.float()
        return mask.sum(dim=1).numpy(), torch.nn.functional.normalize(output, p=2, dim=1).numpy(), result.plan

    def prepare_embeddings(self, body: dict) -> "EmbeddingJob":
        """Check an /v1/embeddings body (cheap: runs on the event loop) and cut it into chunks."""
        if self.src.family == "bart":
            raise ApiError(400, f"{self.name} is a BART model, which generates text: use /v1/completions",
                           "model", "model_not_embedding")
        self.check_model(body.get("model"))
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise ApiError(400, f"'encoding_format' must be 'float' or 'base64', not {fmt!r}", "encoding_format")
        dim = self.src.hidden_size
        dimensions = body.get("dimensions")
        if dimensions is not None and dimensions != dim:
            raise ApiError(400, f"'dimensions' {dimensions!r}: {self.name} gives {dim}-dimensional embeddings only",
                           "dimensions")
        if "input" not in body:
            raise ApiError(400, "'input' is required", "input")
        kind, items = parse_input(body["input"])
        limit = self.runtime.max_length
        if kind == "tokens":
            vocab = int(getattr(self.src.config, "vocab_size", 0) or 0)
            for i, row in enumerate(items):
                bad = [t for t in row if t < 0 or (vocab and t >= vocab)]
                if bad:
                    raise ApiError(400, f"'input[{i}]' holds token id {bad[0]}, outside the vocabulary "
                                        f"(0..{vocab - 1})", "input")
            truncated = sum(len(r) > limit for r in items)
            if truncated:
                log.warning("%d token arrays longer than %d tokens truncated", truncated, limit)
            items = [r[:limit] for r in items]
        sizes = [len(r) for r in items]
        order = sorted(range(len(items)), key=lambda i: -sizes[i])  # less padding per chunk
        chunks = [order[start:start + self.chunk] for start in range(0, len(order), self.chunk)]
        return EmbeddingJob(self.name, kind, items, fmt, chunks)

    # completions
    def completions(self, body: dict) -> dict:
        if self.src.family != "bart":
            raise ApiError(400, f"{self.name} is a sentence encoder ({self.src.family} family), not a generator: "
                                "use /v1/embeddings", "model", "model_not_generative")
        self.check_model(body.get("model"))
        prompt = body.get("prompt")
        if prompt is None:
            raise ApiError(400, "'prompt' is required", "prompt")
        kind, prompts = parse_input(prompt, "prompt")
        if kind != "text":
            raise ApiError(400, "'prompt' as token ids is not supported: give text", "prompt")
        max_tokens = body.get("max_tokens", 16)
        if max_tokens is None:
            max_tokens = 16
        if not _is_int(max_tokens) or max_tokens < 1:
            raise ApiError(400, f"'max_tokens' must be a positive integer, not {max_tokens!r}", "max_tokens")
        num_beams = body.get("num_beams", 1) or 1
        if not _is_int(num_beams) or num_beams < 1:
            raise ApiError(400, f"'num_beams' must be a positive integer, not {num_beams!r}", "num_beams")
        if body.get("stream"):
            raise ApiError(400, "'stream' is not supported", "stream")
        _, mask = self.runtime.tokenize(prompts)
        prompt_tokens = int(mask.sum())
        texts, plan = self.on_compute_thread(self.model._generate, prompts, max_new_tokens=max_tokens,
                                             num_beams=num_beams, batch_size=self.chunk)
        tokenizer = self.src.tokenizer
        completion_tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
        return {"id": "cmpl-" + uuid.uuid4().hex, "object": "text_completion", "created": int(time.time()),
                "model": self.name,
                "choices": [{"text": t, "index": i, "logprobs": None, "finish_reason": "length"}
                            for i, t in enumerate(texts)],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}, "coinfer": plan}


def create_app(service: Service, token: str | None = None):
    """The FastAPI app over `service`; with a token, all but /health need `Authorization: Bearer`."""
    import asyncio
    import hmac

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="coinfer device", docs_url=None, redoc_url=None, openapi_url=None)
    registry = CollectorRegistry()
    requests = Counter("coinfer_http_requests", "HTTP requests answered", ["endpoint", "status"], registry=registry)
    latency = Histogram("coinfer_http_request_seconds", "HTTP request latency", ["endpoint"], registry=registry,
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
    inputs = Counter("coinfer_http_inputs", "inputs (sentences or token arrays) embedded or completed",
                     registry=registry)
    known = {"/v1/embeddings", "/v1/completions", "/v1/models", "/health", "/metrics"}
    expected = f"Bearer {token}".encode() if token else None

    class Observe:
        """Counts, times and (with a token) authenticates every request: a plain ASGI middleware, since
        Starlette's BaseHTTPMiddleware costs about a millisecond a request in task and stream hops."""

        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.inner(scope, receive, send)
            path = scope["path"]
            endpoint = path if path in known or path.startswith("/v1/models/") else "other"
            started = time.perf_counter()
            if expected is not None and path != "/health":
                given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
                if not hmac.compare_digest(given, expected):
                    response = _error_response(ApiError(
                        401, "missing or wrong API key: send 'Authorization: Bearer <token>' (the service's --token)",
                        None, "invalid_api_key"))
                    requests.labels(endpoint, "401").inc()
                    return await response(scope, receive, send)
            status = [500]

            async def send_and_note(message):
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            try:
                await self.inner(scope, receive, send_and_note)
            finally:
                latency.labels(endpoint).observe(time.perf_counter() - started)
                requests.labels(endpoint, str(status[0])).inc()

    app.add_middleware(Observe)

    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        return _error_response(ApiError(400, f"invalid request: {first.get('msg', 'invalid body')}"
                                             + (f" ({'.'.join(loc)})" if loc else ""),
                                        loc[0] if loc else None, "invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _error_response(ApiError(exc.status_code, str(exc.detail), None,
                                        codes.get(exc.status_code, "http_error")))

    @app.exception_handler(Exception)
    async def other_error(_request, exc: Exception):
        return _error_response(_from_exception(exc))

    async def _body(request: Request) -> dict:
        try:
            body = await request.json()
        except Exception:
            raise ApiError(400, "the request body is not valid JSON", None, "invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", None, "invalid_json")
        return body

    def _respond(result: dict) -> JSONResponse:
        inputs.inc(len(result.get("data") or result.get("choices") or ()))
        plan = result.get("coinfer") or {}
        headers = {"X-Coinfer-Plan-Epoch": str(plan["plan_epoch"])} if "plan_epoch" in plan else None
        return JSONResponse(result, headers=headers)

    async def _call(fn, body: dict) -> JSONResponse:
        try:
            result = await run_in_threadpool(fn, body)
        except Exception as exc:
            return _error_response(_from_exception(exc))
        return _respond(result)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        # Checked here on the event loop, computed on the compute thread, awaited without a worker
        # thread in between: one thread hop less per request than run_in_threadpool. Chunks go one at
        # a time, so a long request does not hold back the chunks of short ones that arrive meanwhile.
        body = await _body(request)
        try:
            job = service.prepare_embeddings(body)
            for indices in job.chunks:
                job.add(indices, await asyncio.wrap_future(service.submit(job.kind, job.rows(indices))))
            result = job.answer() if len(job.chunks) <= 1 else await run_in_threadpool(job.answer)
        except Exception as exc:
            return _error_response(_from_exception(exc))
        return _respond(result)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _call(service.completions, await _body(request))

    @app.get("/v1/models")
    async def models():
        return service.models()

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        service.check_model(name)
        return service.model_card()

    @app.get("/health")
    async def health():
        ok, body = await run_in_threadpool(service.health)
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


# --- the command ---------------------------------------------------------------------------------
def _bind(address: str):
    import socket

    from coinfer.errors import UsageError

    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not host:
        raise UsageError(f"--http {address}: expected HOST:PORT (port 0 picks a free one)")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        family, kind, proto, _, where = infos[0]
        # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
        # without it every keep-alive response waits out the peer's delayed ACK (40 ms)
        sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
    except OSError as exc:
        raise UsageError(f"--http {address}: cannot listen ({exc.strerror or exc})") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock, host


def serve(args) -> int:
    """`coinfer device --http`: connect to the server, then answer HTTP until SIGTERM / SIGINT."""
    import asyncio
    import sys

    import torch

    from coinfer import security
    from coinfer.device.api import SplitModel
    from coinfer.errors import UsageError

    sec = security.current()
    sec.check_exposure(args.http, "--http")
    https = bool(sec.cert and sec.key)
    if sec.cert and not sec.key:
        raise UsageError("--http with --tls-cert needs --tls-key too")
    if args.threads:
        torch.set_num_threads(args.threads)
    sock, host = _bind(args.http)
    try:
        model = SplitModel(server=args.server, model=args.model, planner=args.planner, codec=args.codec,
                           timeout_s=args.timeout_s, seed=args.seed, node_id=args.node_id,
                           emulate_frequency=getattr(args, "emulate_frequency", False),
                           engine=getattr(args, "engine", "eager"))
    except BaseException:
        sock.close()
        raise
    try:
        if args.max_length:
            model.runtime.max_length = min(args.max_length, model.runtime.max_length)
        from coinfer.openmp import release_thread_pool

        release_thread_pool()  # the main thread loaded the model; the compute thread computes
        service = Service(model, args.model)
        try:
            app = create_app(service, sec.token)
            with asyncio.Runner(loop_factory=_fast_loop_factory()) as runner:
                return runner.run(_serve(app, sock, host, https, sec))
        finally:
            service.close()
    finally:
        sock.close()
        model.close()
        print("[device] http stopped", file=sys.stderr, flush=True)


def _fast_loop_factory():
    """uvloop's event loop where it is installed (a base dependency off Windows), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _serve(app, sock, host: str, https: bool, sec) -> int:
    import asyncio
    import contextlib

    import uvicorn

    from coinfer.serving import termination_signal

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # coinfer's own handlers stop it, and the process exits 0
            yield

    options = dict(ssl_certfile=sec.cert, ssl_keyfile=sec.key) if https else {}
    server = _Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False, **options))
    stop = asyncio.create_task(termination_signal())
    await asyncio.sleep(0)  # its handlers are in place before anyone learns the address
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done() or stop.done():
            server.should_exit = True
            await task
            return 1 if not stop.done() else 0
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"listening on {shown}:{port}", flush=True)
    await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    await task
    stop.cancel()
    return 0
