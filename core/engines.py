"""Running a built half (DevicePart or ServerPart) with a chosen engine: eager, compile or onnxruntime.

* ``eager`` (the default) calls the part itself: exactly what the half computes without an engine.
* ``compile`` runs the part's encoder work (the embedding and blocks, and the pooling when the part pools)
  through ``torch.compile(dynamic=True)``, compiled at load on a sample batch. A compile that fails, at
  load or on a later shape, is logged once and the engine goes on in eager: it never fails a request.
* ``onnxruntime`` exports the same encoder work once (torch's TorchScript-based exporter, which needs
  only the ``onnx`` package, not onnxscript), with dynamic batch and sequence axes, checks the export
  against eager on a batch of another shape, and runs it in an ``onnxruntime.InferenceSession``
  (CUDAExecutionProvider when the half is on CUDA and ORT has it, else the CPU). The file is cached
  under $COINFER_ONNX_CACHE (else $XDG_CACHE_HOME/coinfer/onnx, else ~/.cache/coinfer/onnx), keyed by
  the model's content fingerprint, the half, the split point and the pruning in force, so a restart,
  or a plan returning to a ratio it used before, loads instead of exporting again. ORT's transformer
  optimizer (fused LayerNorm, GELU, attention) is applied when asked for (COINFER_ONNX_OPTIMIZE=1); a
  fused model that does not stay equal to eager is dropped for the plain one.

BART's decoder and ``generate`` always run eager (autoregressive decoding with a cache is not a graph
the exporter handles well); only its encoder blocks go through the engine.

Pruning writes new weights into the part in place (coinfer.pruning). ``compile`` reads the parameters
at call time (and recompiles by itself when structured pruning changes their shapes), but an ONNX
session holds its own copy: the halves call ``engine.refresh()`` after every change of the weights.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from coinfer.errors import UsageError
from coinfer.packing import length_groups, row_extents
from coinfer.split import DevicePart, GenerationOptions, ServerPart, generate_from_encoder, make_attention_mask, pool

log = logging.getLogger(__name__)

ENGINES = ("eager", "compile", "onnxruntime")
ONNX_INSTALL_HINT = "pip install 'coinfer[onnx]'"
# Bumped when what is exported changes, so older cached files are not loaded (part of the cache key).
_EXPORT_FORMAT = 1
_OPSET = 17
# An export (or a fused model) must agree with eager at least this well on the check batch.
MIN_COSINE = 0.99999


def check_engine(name: str) -> str:
    """`name` if it is an engine this install can run; a UsageError naming the fix otherwise (before
    any loading, so that a missing onnxruntime fails at start, not at the first request)."""
    if name not in ENGINES:
        raise UsageError(f"--engine must be one of {', '.join(ENGINES)}, got {name!r}")
    if name == "onnxruntime":
        _onnx_modules()
    return name


def _onnx_modules():
    try:
        import onnx  # noqa: F401 - the exporter and the optimizer need it
        import onnxruntime
    except ImportError as exc:
        raise UsageError(f"--engine onnxruntime needs onnxruntime and onnx, which are not installed "
                         f"({exc}): {ONNX_INSTALL_HINT}") from None
    return onnxruntime


def onnx_cache_dir() -> Path:
    if os.environ.get("COINFER_ONNX_CACHE"):
        return Path(os.environ["COINFER_ONNX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "coinfer" / "onnx"


class _EncoderWork(nn.Module):
    """What an engine computes for a part: its encoder segment and, when the part pools, the pooling.
    (x, attention_mask) -> hidden states [batch, seq, hidden], or sentence embeddings [batch, dim]."""

    def __init__(self, part: nn.Module):
        super().__init__()
        self.segment = part.segment
        src = part.src
        if isinstance(part, ServerPart):
            self.pools = part.generator is None
        else:
            self.pools = part.runs_alone
        self.mode, self.normalize = src.pooling.mode, src.pooling.normalize

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # EncoderSegment's padded path, spelled out: eager may pack a padded batch (coinfer.packing), but
        # its data-dependent gathers neither export (a graph traced on one mask's packing) nor compile
        # without graph breaks, so the engines compute padded, with the same modules and mask function.
        segment = self.segment
        hidden = segment.embedding(x) if segment.embedding is not None else x
        if len(segment.blocks):
            mask = make_attention_mask(segment.src, hidden, attention_mask)
            extra = (segment.position_bias(hidden),) if segment.position_bias is not None else ()
            for block in segment.blocks:
                out = block(hidden, mask, *extra)
                hidden = out[0] if isinstance(out, tuple) else out
        return pool(hidden, attention_mask, self.mode, self.normalize) if self.pools else hidden


def _half_name(part: nn.Module) -> str:
    return "server" if isinstance(part, ServerPart) else "device"


def _part_device(part: nn.Module) -> torch.device:
    for tensor in part.parameters():
        return tensor.device
    return torch.device("cpu")


def _part_dtype(part: nn.Module) -> torch.dtype:
    for tensor in part.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def sample_inputs(part: nn.Module, batch: int = 2, texts: tuple[str, ...] | None = None):
    """A padded batch of the part's input: token ids (k = 0 on the server, any device part) or hidden
    states of the model's width (seeded), with a 0/1 mask whose last row is padded. Padding matters:
    traced with an all-ones mask, transformers skips the mask and the graph would ignore padding."""
    src = part.src
    texts = texts or ("an edge device runs the first blocks of the model", "a short one",
                      "the server finishes", "pooling makes one vector")
    texts = tuple(texts[i % len(texts)] for i in range(batch))
    ids, mask = src.tokenize(list(texts), 64)
    if mask.all():  # one row shorter than the rest, whatever the texts
        ids, mask = src.tokenize(list(texts[:-1]) + ["a"], 64)
    device, dtype = _part_device(part), _part_dtype(part)
    takes_ids = isinstance(part, DevicePart) or part.k == 0
    if takes_ids:
        return ids.to(device), mask.to(device)
    generator = torch.Generator().manual_seed(batch * 7919 + ids.shape[1])
    hidden = torch.randn(ids.shape[0], ids.shape[1], src.config.hidden_size, generator=generator)
    return hidden.to(device, dtype), mask.to(device)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float().reshape(a.shape[0], -1).cpu(), b.detach().float().reshape(b.shape[0], -1).cpu()
    return float(nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12).min())


class Engine:
    """The eager engine, and the interface of the others: call it as the part is called."""

    name = "eager"

    def __init__(self, part: nn.Module):
        self.part = part

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self.part(*args, **kwargs)

    def prepare(self, rho: float, method: str) -> None:
        """A plan will prune to (rho, method): do the slow part now, beside the serving state (the halves
        call it before the swap, outside their compute lock)."""

    def refresh(self) -> None:
        """The part's weights changed in place (a new pruning): make the next call compute with them."""

    def describe(self) -> str:
        return self.name


class _EncoderEngine(Engine):
    """An engine that replaces the part's encoder work with `self._run(x, mask)`; BART's generation and
    a device part at k = 0 (token ids pass through) stay eager."""

    groups_by_length = False  # an engine that can only compute padded: see _run_by_length

    def __init__(self, part: nn.Module):
        super().__init__(part)
        # eval(): the exporter restores the training flag of the module it is given, recursively; a new
        # module is in training mode, which would switch the part's dropout on after an export
        self.work = _EncoderWork(part).eval() if part.segment is not None else None
        self.fallback_reason = ""  # why this engine now runs eager ("" while it runs its own way)

    def _fall_back(self, reason: str) -> None:
        if not self.fallback_reason:
            log.warning("--engine %s: %s; this half runs eager from now on", self.name, reason)
        self.fallback_reason = reason

    def describe(self) -> str:
        return f"{self.name} (fell back to eager: {self.fallback_reason})" if self.fallback_reason else self.name

    def _run(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _run_by_length(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`_run` on groups of rows of similar length, each cut to its own longest: an engine that
        computes padded then wastes little on a merged batch of short and long sequences. Only for
        pooled outputs ([batch, dim]), which do not depend on the padding around a row."""
        extents = row_extents(attention_mask)
        groups = length_groups(extents)
        if len(groups) == 1:  # every row in one group: cut the padding (a view), gather nothing
            keep = max(1, max(extents, default=1))
            return self._run(x[:, :keep], attention_mask[:, :keep])
        out = None
        for rows in groups:
            keep = max(1, max(extents[i] for i in rows))
            index = torch.tensor(rows, device=x.device)
            part = self._run(x.index_select(0, index)[:, :keep], attention_mask.index_select(0, index)[:, :keep])
            if out is None:
                out = part.new_empty((x.shape[0], *part.shape[1:]))
            out[index.to(part.device)] = part
        return out

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, attention_mask: torch.Tensor, *rest, **kwargs) -> torch.Tensor:
        if self.work is None or self.fallback_reason or set(kwargs) - {"generation"}:
            return self.part(x, attention_mask, *rest, **kwargs)  # what this engine does not cover: eager
        out = self._run_by_length(x, attention_mask) if self.groups_by_length and self.work.pools else \
            self._run(x, attention_mask)
        generator = getattr(self.part, "generator", None)
        if generator is None:
            return out
        generation = kwargs.get("generation", rest[0] if rest else GenerationOptions())
        return generate_from_encoder(generator, out, attention_mask, generation)


class CompileEngine(_EncoderEngine):
    name = "compile"

    def __init__(self, part: nn.Module, warm: bool = True):
        super().__init__(part)
        self._compiled = None
        if self.work is None:
            return
        try:
            self._compiled = torch.compile(self.work, dynamic=True)
            if warm:  # compile at load, not on the first request; batch 1 is a shape of its own (0/1 specialised)
                started = time.perf_counter()
                for batch in (2, 1):
                    with torch.inference_mode():
                        self._compiled(*sample_inputs(part, batch))
                log.info("torch.compile of the %s half: %.1f s", _half_name(part), time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - a compiler failure of any kind must not stop the half
            self._fall_back(f"torch.compile failed ({_first_line(exc)})")

    def _run(self, x, attention_mask):
        try:
            return self._compiled(x, attention_mask)
        except Exception as exc:  # noqa: BLE001 - a recompile on a new shape failed: eager answers instead
            self._fall_back(f"torch.compile failed on a {tuple(x.shape)} batch ({_first_line(exc)})")
            return self.work(x, attention_mask)


# Files exported by this process, by path: the tests check that a second build loads, not exports.
EXPORTS: dict[str, int] = {}
_export_lock = threading.Lock()


class OnnxRuntimeEngine(_EncoderEngine):
    name = "onnxruntime"
    # its graph is traced on padded input (eager's packing does not export); on a merged batch of 64
    # sentences of 13-20 words, grouping by length cut the padded tokens by a fifth
    groups_by_length = True

    def __init__(self, part: nn.Module, pruner=None, optimize: bool | None = None, cache_dir: Path | None = None):
        super().__init__(part)
        self.ort = _onnx_modules()
        if _part_dtype(part) != torch.float32:
            raise UsageError(f"--engine onnxruntime computes in fp32; this half is {_part_dtype(part)} "
                             "(give --dtype fp32, or another engine)")
        self.pruner = pruner
        # off by default: on MiniLM (2 cores) the fused model (BiasGelu, SkipLayerNorm; no attention fusion
        # matches transformers' sdpa mask) was no faster than ORT's own graph optimisations (b8: 18.1 vs 17.8
        # ms, b1: 7.6 vs 4.2 ms, medians of 7 interleaved rounds)
        self.optimize = (os.environ.get("COINFER_ONNX_OPTIMIZE", "0") == "1") if optimize is None else optimize
        self.cache_dir = Path(cache_dir) if cache_dir is not None else onnx_cache_dir()
        self.device = _part_device(part)
        self.session = None
        self.path: Path | None = None
        self._key = ""  # the cache key the session was built for
        self.variant = ""  # plain | optimized: what the session runs
        self._outputs_on = self.device
        if self.work is not None:
            self.refresh()

    # --- the file ------------------------------------------------------------------------------
    def cache_key(self, rho: float | None = None, method: str | None = None) -> str:
        """What the exported graph depends on: the model's content, the half and its blocks, the pruning
        (default: the one in force; it changes the weights, and structured pruning their shapes), and the
        exporter."""
        src, part = self.part.src, self.part
        if rho is None:
            state = self.pruner.state if self.pruner is not None else None
            rho, method = (state.rho, state.method) if state is not None else (1.0, "magnitude")
        pruning = "dense" if rho == 1.0 else f"{method}-{rho:.6g}"
        if method == "random" and rho < 1.0:
            pruning += f"-seed{src.seed}"  # random pruning draws from the seed, which the fingerprint omits
        import transformers

        tools = hashlib.blake2b(f"{_EXPORT_FORMAT}|{_OPSET}|{torch.__version__}|{transformers.__version__}"
                                .encode(), digest_size=4).hexdigest()
        return f"{src.fingerprint}-{_half_name(part)}-k{part.k}-{pruning}-{tools}"

    def _export(self, path: Path, work: nn.Module | None = None) -> None:
        work = work if work is not None else self.work
        x, mask = sample_inputs(self.part, 2)
        scratch = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        started = time.perf_counter()
        with warnings.catch_warnings():
            # the TorchScript exporter's deprecation notice, and tracer notes on shape checks that hold
            # for every input (the graph is checked against eager on another shape right after)
            warnings.simplefilter("ignore")
            with torch.no_grad():
                torch.onnx.export(work, (x, mask.to(torch.int64)), str(scratch), dynamo=False,
                                  input_names=["x", "attention_mask"], output_names=["out"],
                                  dynamic_axes={"x": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                                "out": {0: "batch", 1: "seq"} if not work.pools else {0: "batch"}},
                                  opset_version=_OPSET, do_constant_folding=True)
        os.replace(scratch, path)  # atomic: a concurrent process sees no file or a whole one
        EXPORTS[str(path)] = EXPORTS.get(str(path), 0) + 1
        log.info("exported the %s half (k=%d) to ONNX in %.1f s: %s", _half_name(self.part), self.part.k,
                 time.perf_counter() - started, path)

    def _optimized(self, plain: Path) -> Path | None:
        """ORT's transformer optimizer on the plain export (cached beside it), or None where it fails."""
        path = plain.with_name(plain.stem + "-opt.onnx")
        if path.exists():
            return path
        try:
            from onnxruntime.transformers.optimizer import optimize_model

            config = self.part.src.config
            heads = getattr(config, "num_attention_heads", 0) or getattr(config, "encoder_attention_heads", 0)
            scratch = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            model = optimize_model(str(plain), model_type="bart" if self.part.src.family == "bart" else "bert",
                                   num_heads=int(heads), hidden_size=int(config.hidden_size), opt_level=1)
            model.save_model_to_file(str(scratch))
            os.replace(scratch, path)
            log.info("ORT transformer optimizer: %s", model.get_fused_operator_statistics())
            return path
        except Exception as exc:  # noqa: BLE001 - the plain model serves
            log.warning("onnxruntime's transformer optimizer failed (%s: %s); using the plain export",
                        type(exc).__name__, exc)
            return None

    def _session(self, path: Path):
        ort = self.ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        self._outputs_on = self.device
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.device.index or 0}))
            else:
                log.warning("--engine onnxruntime: this onnxruntime has no CUDAExecutionProvider "
                            "(install onnxruntime-gpu); the %s half runs on the CPU", _half_name(self.part))
        return ort.InferenceSession(str(path), options, providers=providers)

    def _check(self, session) -> float:
        """Cosine to eager on a batch of another shape than the export's (3 rows, one padded)."""
        x, mask = sample_inputs(self.part, 3, texts=("the check batch has three rows of text in it",
                                                     "and one of them is padded", "so"))
        with torch.inference_mode():
            expected = self.work(x, mask)
        return _cosine(self._run_session(session, x, mask), expected)

    def prepare(self, rho: float, method: str) -> None:
        """Export (rho, method) ahead of the swap from a pruned copy of the part, so that refresh() under
        the half's compute lock only loads a cached file."""
        if self.work is None or self.fallback_reason or self.pruner is None:
            return
        path = self.cache_dir / f"{self.cache_key(rho, method)}.onnx"
        if path.exists():
            return
        import copy

        from coinfer.pruning import Pruner

        src = self.part.src
        try:
            # the encoder work only (not BART's decoder), sharing the ModelSource (it holds locks); each
            # layer prunes on its own (per-layer masks, per-block groups), so pruning only these is exact
            twin = copy.deepcopy(self.work, memo={id(src): src})
            Pruner(twin.segment.linear_layers(), seed=src.seed, head_dim=src.head_dim).apply(rho, method)
            with _export_lock:
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    self._export(path, twin)
        except Exception as exc:  # noqa: BLE001 - refresh() exports in place instead
            log.warning("--engine onnxruntime: exporting ahead for rho=%g %s failed (%s: %s)", rho, method,
                        type(exc).__name__, exc)

    def refresh(self) -> None:
        """(Re)build the session for the weights the part holds now: load the cached export for this
        pruning, or export (and cache) it. Nothing to do when the pruning is the session's already."""
        if self.work is None:
            return
        key = self.cache_key()
        if self.session is not None and key == self._key:
            return
        path = self.cache_dir / f"{key}.onnx"
        started = time.perf_counter()
        self.fallback_reason = ""
        try:
            with _export_lock:  # two builds of one half in a process export once
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    self._export(path)
            session, variant = self._session(path), "plain"
            cosine = self._check(session)
            if cosine < MIN_COSINE:  # a cached file from a bad export: export again once
                log.warning("cached ONNX export %s disagrees with eager (cosine %.7f); exporting again", path, cosine)
                with _export_lock:
                    self._export(path)
                session = self._session(path)
                cosine = self._check(session)
                if cosine < MIN_COSINE:
                    raise RuntimeError(f"the export disagrees with eager (cosine {cosine:.7f})")
            if self.optimize:
                fused = self._optimized(path)
                if fused is not None:
                    fused_session = self._session(fused)
                    fused_cosine = self._check(fused_session)
                    if fused_cosine >= MIN_COSINE:
                        session, variant, path = fused_session, "optimized", fused
                    else:
                        log.warning("ORT's optimized model disagrees with eager (cosine %.7f); using the plain "
                                    "export", fused_cosine)
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 - an export the exporter cannot make: eager serves
            self.session = None
            self._fall_back(f"ONNX export or session failed ({_first_line(exc)})")
            return
        self.session, self.path, self.variant, self._key = session, path, variant, key
        log.info("onnxruntime session for the %s half (k=%d, %s) ready in %.2f s", _half_name(self.part),
                 self.part.k, variant, time.perf_counter() - started)

    def describe(self) -> str:
        return super().describe() if self.fallback_reason else f"{self.name} ({self.variant or 'nothing to run'})"

    # --- running -------------------------------------------------------------------------------
    def _run_session(self, session, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        feed = {"x": x.detach().cpu().numpy(),
                "attention_mask": attention_mask.detach().to("cpu", torch.int64).numpy()}
        (out,) = session.run(["out"], feed)
        return torch.from_numpy(out).to(self._outputs_on)

    def _run(self, x, attention_mask):
        return self._run_session(self.session, x, attention_mask)


def prepare_engine(part: nn.Module, name: str = "eager", pruner=None, **options) -> Engine:
    """The engine `name` over a built part (a DevicePart or ServerPart, after its pruner has applied
    the plan's pruning). Parts of other kinds (the device group's) run eager."""
    check_engine(name)
    if name == "eager":
        return Engine(part)
    if not isinstance(part, (DevicePart, ServerPart)):
        log.warning("--engine %s: %s is not a DevicePart or ServerPart; it runs eager", name, type(part).__name__)
        return Engine(part)
    if name == "compile":
        return CompileEngine(part, **options)
    return OnnxRuntimeEngine(part, pruner=pruner, **options)
