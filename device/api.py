"""The Python API applications use: `SplitModel` (and its asyncio twin `AsyncSplitModel`).

    from coinfer import SplitModel

    with SplitModel(server="edge:50051", model="minilm") as model:
        vectors = model.encode(["first sentence", "second one"], normalize_embeddings=True)

The model is loaded here (the device half only); the split point, plan epoch and the server half's
pruning are the server's: `SplitModel` asks the server for them (its `Info`) and builds the device
half to match, or, given `planner=`, follows the planner's plans. `encode` takes
sentence-transformers' arguments with their meaning; any number of sentences is sent in chunks the
server accepts, and the answers come back in input order. `generate` is BART's.

Every answer says what produced it: after `encode` / `generate`, `model.last_plan` is a dict with the
plan's epoch, split point k, rho_device / rho_server, prune_method, codec, predicted_quality (the
planner's; for a static plan 1.0 when nothing is pruned and the codec is fp32, else None: unknown) and
the device's clock mode (cpufreq | nvml | emulated | fixed); `model.plan_info()` is the same for the
plan in force now. (`last_plan` is per thread; AsyncSplitModel sets its own after each await.)
"""
from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import fields

from coinfer.errors import UsageError

log = logging.getLogger(__name__)


def merge_plan_infos(infos):
    from coinfer.device.runtime import merge_plan_infos as merge

    return merge(infos) or None

SERVER_MAX_BATCH = 256  # sequences per request a coinfer server accepts (more: RESOURCE_EXHAUSTED)

# **security: the names of coinfer.security.Security, and the command line's spelling of them
_SECURITY_ALIASES = {"tls_cert": "cert", "tls_key": "key", "tls_ca": "ca", "tls_server_name": "server_name"}


def _security(options: dict):
    from coinfer.security import Security

    known = {f.name for f in fields(Security)}
    given = {}
    for name, value in options.items():
        field = _SECURITY_ALIASES.get(name, name)
        if field not in known:
            raise UsageError(f"SplitModel: unknown option {name!r} (security options: "
                             + ", ".join(sorted(known | set(_SECURITY_ALIASES))) + ")")
        given[field] = value
    return Security(**given)


def _make_runtime_class():
    from coinfer.device.runtime import DeviceRuntime

    class _Runtime(DeviceRuntime):
        """A DeviceRuntime whose generation options may be set per call (per thread), so that
        concurrent `generate` calls with different limits do not see each other's."""

        def __init__(self, *args, **kwargs):
            self._per_call = threading.local()
            super().__init__(*args, **kwargs)

        @property
        def generation(self):
            return getattr(self._per_call, "generation", None) or self._default_generation

        @generation.setter
        def generation(self, value):
            self._default_generation = value

    return _Runtime


class SplitModel:
    """The device half of a split model, connected to a coinfer server.

    server: the server (or channel emulator) address HOST:PORT.
    model: the model spec (``minilm``, a local checkpoint folder, ``random:<shape>``); it must be
        the model the server holds, else a UsageError names both.
    planner: a planner's HOST:PORT: follow its plans (split point, pruning, codec, ...) instead of
        the server's current plan; the constructor waits (up to timeout_s) for the first plan.
    codec: the activation codec on the wire (fp32, fp16, bf16, int8, int4).
    timeout_s: the deadline of connecting and of each request.
    seed: the seed of ``random:`` models (the server's --seed).
    emulate_frequency: stretch the device compute to emulate clock caps the CPU cannot set (a
        planner's f_d); by default such caps are ignored and the clock is reported as fixed.
    engine: what computes the device half: eager (default), compile or onnxruntime (coinfer.engines;
        onnxruntime needs ``pip install 'coinfer[onnx]'``).
    **security: token, cert/tls_cert, key/tls_key, ca/tls_ca, server_name/tls_server_name, mtls —
        those of coinfer.security.Security. Security is PROCESS-WIDE in coinfer: given any, they
        replace the security of every coinfer gRPC client in this process (coinfer.security.configure).
    """

    def __init__(self, server: str = "127.0.0.1:50051", model: str = "minilm", planner: str | None = None,
                 codec: str = "fp32", timeout_s: float = 120.0, seed: int = 0, node_id: str = "device",
                 emulate_frequency: bool = False, engine: str = "eager", **security):
        from coinfer import security as process_security
        from coinfer.device.client import InferenceClient
        from coinfer.engines import check_engine
        from coinfer.models import resolve_model
        from coinfer.split import GenerationOptions

        check_engine(engine)  # a missing onnxruntime is named before anything connects or loads
        if security:
            process_security.configure(_security(security))
        self.server = server
        self.planner = planner
        self.timeout_s = timeout_s
        self._runtime = None
        self._last = threading.local()  # last_plan, per calling thread
        self.src = resolve_model(model, seed=seed)
        with InferenceClient(server, timeout_s=timeout_s) as client:
            client.wait_ready(timeout_s)
            info = client.info()
        if info.model_id != self.src.name:
            raise UsageError(f"server at {server} holds model {info.model_id!r}, but this SplitModel loaded "
                             f"{self.src.name!r} (model={model!r}): give the server's model")
        self.info = info
        self._runtime = _make_runtime_class()(
            self.src, int(info.split_point), server=server, codec=codec, epoch=int(info.plan_epoch),
            generation=GenerationOptions(max_new_tokens=32, num_beams=1), timeout_s=timeout_s,
            emulate_frequency=emulate_frequency, engine=engine)
        try:
            if planner:
                self._runtime.follow(planner, node_id)
                if self._runtime.watcher.wait_for_plan(timeout_s) is None:
                    watcher = self._runtime.watcher
                    refused = f" ({watcher.refused} refused: see the log)" if watcher.refused else ""
                    raise UsageError(f"planner {planner}: no plan accepted within {timeout_s:g} s{refused}")
                self._runtime.client.wait_ready(timeout_s)
            else:
                self._runtime.connect(timeout_s)
        except BaseException:
            self.close()
            raise

    # --- what it is --------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.src.name

    @property
    def split(self) -> int:
        """k: blocks 1..k run here (the current plan's, which a planner may change)."""
        return self._runtime.split

    @property
    def epoch(self) -> int:
        return self._runtime.epoch

    @property
    def runtime(self):
        """The DeviceRuntime underneath (timings, plans, retries)."""
        return self._runtime

    @property
    def last_plan(self) -> dict | None:
        """What produced this thread's last answer (encode / generate): plan_epoch, k, rho_device,
        rho_server, prune_method, codec, predicted_quality, clock, ... (see coinfer.device.runtime's
        plan_info). When a plan changed between the chunks of one call: the last chunk's, with
        "plan_epochs" listing every epoch. None before the first answer."""
        return getattr(self._last, "plan", None)

    def plan_info(self) -> dict:
        """What the next answer will be produced under (the plan in force now), as last_plan."""
        return self._check_open().plan_info()

    def get_sentence_embedding_dimension(self) -> int:
        return self.src.hidden_size

    def __repr__(self) -> str:
        runtime = self._runtime
        where = f"split={runtime.split}, epoch={runtime.epoch}" if runtime is not None else "closed"
        planner = f", planner={self.planner!r}" if self.planner else ""
        return f"SplitModel(model={self.src.name!r}, server={self.server!r}{planner}, {where})"

    # --- requests ----------------------------------------------------------------------------
    def _check_open(self):
        if self._runtime is None:
            raise UsageError("this SplitModel is closed")
        return self._runtime

    def encode(self, sentences, batch_size: int = 32, normalize_embeddings: bool = False,
               convert_to_numpy: bool = True, convert_to_tensor: bool = False, show_progress_bar: bool | None = None):
        """Sentence embeddings, as SentenceTransformer.encode gives them (see _encode); `last_plan` then
        says what produced them."""
        vectors, plan = self._encode(sentences, batch_size, normalize_embeddings, convert_to_numpy,
                                     convert_to_tensor, show_progress_bar)
        self._last.plan = plan
        return vectors

    def _encode(self, sentences, batch_size: int = 32, normalize_embeddings: bool = False,
                convert_to_numpy: bool = True, convert_to_tensor: bool = False,
                show_progress_bar: bool | None = None):
        """Sentence embeddings, as SentenceTransformer.encode gives them.

        A str gives one vector [dim]; a list gives [n, dim] (convert_to_tensor: a torch tensor, which
        wins over convert_to_numpy; neither: a list of tensors). Sentences go in chunks of batch_size
        (at most the server's 256), longest first, and come back in input order. Returns (embeddings,
        the plan_info of the requests; None when nothing was sent).
        """
        import numpy as np
        import torch

        if self.src.family == "bart":
            raise UsageError(f"encode: {self.src.name} is a BART model, which generates text: use generate()")
        runtime = self._check_open()
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise UsageError(f"encode: sentence {i} is {type(text).__name__}, not str")
        if batch_size < 1:
            raise UsageError(f"encode: batch_size must be at least 1, not {batch_size}")
        if show_progress_bar is None:
            show_progress_bar = log.getEffectiveLevel() in (logging.INFO, logging.DEBUG)
        if not texts:  # as sentence-transformers: an empty result, no request sent
            if convert_to_tensor:
                return torch.empty(0), None
            return (np.empty((0,), dtype=np.float32) if convert_to_numpy else []), None
        chunk = min(batch_size, SERVER_MAX_BATCH)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # less padding per chunk
        starts = range(0, len(order), chunk)
        if show_progress_bar:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="Batches")
        vectors: list = [None] * len(texts)
        plans: list[dict] = []
        for start in starts:
            indices = order[start:start + chunk]
            result = runtime.infer([texts[i] for i in indices])
            plans.append(result.plan)
            output = result.output.float()
            if normalize_embeddings:  # idempotent: MiniLM's server half already normalises
                output = torch.nn.functional.normalize(output, p=2, dim=1)
            for row, i in enumerate(indices):
                vectors[i] = output[row]
        plan = merge_plan_infos(plans)
        if convert_to_tensor:
            result = torch.stack(vectors)
            return (result[0] if single else result), plan
        if convert_to_numpy:
            result = torch.stack(vectors).numpy()
            return (result[0] if single else result), plan
        return (vectors[0] if single else vectors), plan

    def generate(self, texts, max_new_tokens: int = 32, num_beams: int = 1, batch_size: int = 32):
        """BART: the generated text of each input (a str gives a str), in input order; `last_plan` then
        says what produced it."""
        out, plan = self._generate(texts, max_new_tokens, num_beams, batch_size)
        self._last.plan = plan
        return out

    def _generate(self, texts, max_new_tokens: int = 32, num_beams: int = 1, batch_size: int = 32):
        from coinfer.split import GenerationOptions

        if self.src.family != "bart":
            raise UsageError(f"generate: {self.src.name} is a sentence encoder ({self.src.family} family), "
                             "not a generator: use encode()")
        runtime = self._check_open()
        single = isinstance(texts, str)
        inputs = [texts] if single else list(texts)
        if max_new_tokens < 1 or num_beams < 1 or batch_size < 1:
            raise UsageError("generate: max_new_tokens, num_beams and batch_size must be at least 1")
        if not inputs:
            return [], None
        chunk = min(batch_size, SERVER_MAX_BATCH)
        runtime._per_call.generation = GenerationOptions(max_new_tokens=max_new_tokens, num_beams=num_beams)
        plans: list[dict] = []
        try:
            out: list[str] = []
            for start in range(0, len(inputs), chunk):
                result = runtime.infer(inputs[start:start + chunk])
                plans.append(result.plan)
                out.extend(self.src.tokenizer.batch_decode(result.output, skip_special_tokens=True))
        finally:
            runtime._per_call.generation = None
        return (out[0] if single else out), merge_plan_infos(plans)

    # --- life --------------------------------------------------------------------------------
    def close(self) -> None:
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            runtime.close()

    def __enter__(self) -> "SplitModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncSplitModel:
    """SplitModel for asyncio services: the same constructor arguments; `await` encode, generate and
    close. Connecting (loading the model, asking the server) happens in a worker thread on first use
    (`async with`, `await model.open()`, or the first call); each call runs the blocking SplitModel
    call in a worker thread, so concurrent calls overlap (the device computes one at a time, the
    requests share one stream to the server)."""

    def __init__(self, server: str = "127.0.0.1:50051", model: str = "minilm", planner: str | None = None,
                 codec: str = "fp32", timeout_s: float = 120.0, **kwargs):
        self._args = dict(server=server, model=model, planner=planner, codec=codec, timeout_s=timeout_s, **kwargs)
        self._model: SplitModel | None = None
        self._opening: asyncio.Lock | None = None
        self._closed = False
        self.last_plan: dict | None = None  # what produced the last answer awaited (see SplitModel.last_plan)

    async def open(self) -> SplitModel:
        if self._closed:
            raise UsageError("this AsyncSplitModel is closed")
        if self._model is None:
            if self._opening is None:
                self._opening = asyncio.Lock()
            async with self._opening:
                if self._model is None:
                    self._model = await asyncio.to_thread(SplitModel, **self._args)
        return self._model

    @property
    def sync(self) -> SplitModel | None:
        """The SplitModel underneath, once open."""
        return self._model

    async def encode(self, sentences, **kwargs):
        model = await self.open()
        vectors, self.last_plan = await asyncio.to_thread(model._encode, sentences, **kwargs)
        return vectors  # last_plan is set with no await in between: the caller reads its own

    async def generate(self, texts, **kwargs):
        model = await self.open()
        out, self.last_plan = await asyncio.to_thread(model._generate, texts, **kwargs)
        return out

    def plan_info(self) -> dict:
        """The plan in force now (see SplitModel.plan_info); the model must be open."""
        if self._model is None:
            raise UsageError("this AsyncSplitModel is not open")
        return self._model.plan_info()

    async def close(self) -> None:
        self._closed = True
        model, self._model = self._model, None
        if model is not None:
            await asyncio.to_thread(model.close)

    async def __aenter__(self) -> "AsyncSplitModel":
        await self.open()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def __repr__(self) -> str:
        if self._model is not None:
            return "Async" + repr(self._model)
        state = "closed" if self._closed else "not open"
        return f"AsyncSplitModel(model={self._args['model']!r}, server={self._args['server']!r}, {state})"
