"""The measured output-quality model: how much the answer changes when each half is pruned.

The planner trades pruning (time, energy) against answer quality. The L1 distortion bound of
coinfer.planner.distortion measures the weights; this module measures the *output*: a calibration
set is run through the real model code (the embedding stage, transformers' own blocks and the head,
built by coinfer.split and pruned by coinfer.pruning.Pruner exactly as the device and the server
prune their halves) and compared with the unpruned model on the same sentences.

Quality metric
    * encoders (family "bert"): cosine of the sentence embedding (the model's own pooling, as
      coinfer.split.pool computes the halves' output) to the unpruned model's, per sentence;
    * BART: teacher-forced top-1 token agreement of the decoder's logits with the unpruned model's
      (the decoder is fed the input sentence shifted right, as in BART's denoising objective; one
      forward pass, no generation), per sentence, over the real tokens.
    Curves keep the mean over the calibration sentences and its 10th percentile.

Curves
    For each pruning method and split point k = 0..L, two 1-D curves over the kept ratio rho:
    "device" = blocks [0, k) pruned at rho, the rest unpruned (the device's rho_d; absent at k = 0),
    "server" = blocks [k, L) pruned at rho, BART's decoder too, the rest unpruned (the server's rho_s;
    absent at k = L for an encoder, whose server then has nothing to prune). Pruning is per layer
    (magnitude, random) or per head / FFN neuron of one block (structured), so pruning blocks [0, k)
    of one stack prunes what a DevicePart(k) pruned with Pruner.for_part prunes (tested).

Loss and composition
    loss(k, m, rho_d, rho_s) = L_d^{k,m}(rho_d) + L_s^{k,m}(rho_s); each side is fitted with
    coinfer.planner.distortion.fit_convex_decreasing (max of affine pieces: convex and non-increasing
    in rho, 0 at rho = 1), so the planner's convex program stays convex. Two loss spaces:
    ``one_minus`` (loss = 1 - quality; predicted quality = 1 - loss) and ``neg_log`` (loss = -ln q,
    multiplicative composition; predicted quality = exp(-loss)). scripts/bench_quality measured the
    joint (rho_d, rho_s) grid {0.4, 0.6, 0.8, 1.0}^2 at every k = 0..6 on the held-out sentences
    (coinfer.samples.SENTENCES) through real DevicePart/ServerPart halves, for all-MiniLM-L6-v2 fitted
    on the 48 calibration sentences (ratios 0.3..1.0), and compared (predicted - measured mean cosine):

        grid points with rho >= min_ratio     MAE one_minus   MAE neg_log   max |err| one_minus / neg_log
        structured (min_ratio 0.5, 44 pts)    0.0129          0.0117        0.033 / 0.026
        magnitude  (min_ratio 0.4, 81 pts)    0.0091          0.0066        0.049 / 0.030
        whole grid, structured (81 pts)       0.0349          0.0191        0.142 / 0.056

    Both err on the safe side (predicted below measured: mean bias -0.008 and -0.003 in neg_log),
    one_minus more so: adding 1 - q over the halves double-counts, since the second half's damage
    acts on an already-damaged state (q_joint ~ q_d * q_s). neg_log is better everywhere, so it is
    DEFAULT_LOSS_SPACE; `with_loss_space` refits the same curves in the other space.

Usable range
    Where a measured curve saturates (quality collapses, then flattens at very low rho) the loss is
    concave there, and a convex fit under-predicts it. Each method gets a ``min_ratio``: the lowest
    grid ratio r such that, fitting every curve of that method on the grid points >= r, each fitted
    quality is within FIT_TOLERANCE of the measured one and each measured mean quality >= MIN_QUALITY.
    (MiniLM: magnitude's curves are convex, min_ratio 0.4 is where k = L falls below 0.5 at 0.3;
    structured pruning removes whole heads, 12 per block, so its curves have steps, e.g. 8 -> 10
    heads between rho 0.7 and 0.8, and the hull's worst gap is 0.033: min_ratio 0.5.)
    Pieces are fitted on those points only (with min_ratio = 1, on the highest ratio below 1), and
    below min_ratio they extend the lowest chord: outside the checked range, so the planner should
    keep rho >= min_ratio[method].

Speed
    speed[m] = sigma_m, the share of a block's compute time that shrinks with rho:
    time(rho) ~ t1 (sigma rho + 1 - sigma), from timing one block at rho = 0.5 against rho = 1 on the
    largest calibration batch repeated to ~1024 tokens (fastest of a few interleaved repeats, on one
    thread: on a shared machine a threaded timing of small kernels measures the scheduler; the thread
    count is restored after), clamped to [0, 1]. Structured pruning
    shrinks the matrices (sigma near 1 on a model big enough to time); magnitude and random pruning
    zero weights of dense matrices (sigma ~ 0).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from coinfer.errors import UsageError
from coinfer.planner.distortion import Pieces, fit_convex_decreasing

DEFAULT_RATIOS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DEFAULT_METHODS = ("structured", "magnitude")
DEFAULT_LOSS_SPACE = "neg_log"
LOSS_SPACES = ("one_minus", "neg_log")
METRICS = ("cosine", "token_agreement")
SIDES = ("device", "server")
STATISTICS = ("mean", "p10", "worst")
MAX_TOKENS = 64            # calibration sentences are truncated to this many tokens
BATCH_SIZE = 16            # sentences per forward pass (sorted by length, so little padding)
FIT_TOLERANCE = 0.04       # |fitted - measured| quality allowed at a grid point inside the usable range
MIN_QUALITY = 0.5          # measured mean quality required inside the usable range
SPEED_RATIO = 0.5
SPEED_REPEATS = 7
SPEED_TOKENS = 1024        # tokens in the timing input
SCHEMA = 2                 # version of to_dict's layout (2: worst curves)
_EPS = 1e-6                # quality floor for -ln q


def _loss(quality: float, space: str) -> float:
    q = min(1.0, max(0.0, float(quality)))
    if space == "one_minus":
        return 1.0 - q
    return -math.log(max(q, _EPS))


def _quality(loss: float, space: str) -> float:
    loss = max(0.0, float(loss))
    q = 1.0 - loss if space == "one_minus" else math.exp(-loss)
    return min(1.0, max(0.0, q))


def side_present(family: str, num_blocks: int, k: int, side: str) -> bool:
    """Whether the half on `side` prunes anything at split k: the device holds blocks [0, k); the server
    holds blocks [k, L) and, for BART, the decoder."""
    if side == "device":
        return k > 0
    return k < num_blocks or family == "bart"


def _fit(ratios, qualities, space: str, min_ratio: float) -> Pieces:
    """Convex, non-increasing pieces of the loss through (1, 0), fitted on the ratios >= min_ratio."""
    below_one = [r for r in ratios if r < 1.0]
    lowest = min(min_ratio, max(below_one)) if below_one else 1.0   # at least one chord, even if none is usable
    xs, ys = [], []
    for r, q in zip(ratios, qualities):
        if r >= lowest - 1e-9:
            xs.append(float(r))
            ys.append(0.0 if r >= 1.0 else max(0.0, _loss(q, space)))
    pieces = fit_convex_decreasing(xs, ys)
    # The last chord ends at (1, 0): make it pass there exactly, so an unpruned side loses exactly 0.
    alpha = list(pieces.alpha)
    alpha[-1] = -pieces.beta[-1]
    return Pieces(tuple(alpha), pieces.beta)


def _fit_error(ratios, qualities, space: str, min_ratio: float) -> float:
    pieces = _fit(ratios, qualities, space, min_ratio)
    return max((abs(_quality(pieces(r), space) - q) for r, q in zip(ratios, qualities) if r >= min_ratio - 1e-9),
               default=0.0)


def choose_min_ratio(ratios, curves: list[tuple[float, ...]], space: str,
                     tolerance: float = FIT_TOLERANCE, min_quality: float = MIN_QUALITY) -> float:
    """The lowest grid ratio from which every curve (mean quality per ratio) is fitted within
    `tolerance` and stays >= `min_quality` (1.0: no pruning is safe)."""
    for r in sorted(x for x in ratios if x < 1.0):
        ok = True
        for curve in curves:
            kept = [q for x, q in zip(ratios, curve) if x >= r - 1e-9]
            if min(kept) < min_quality or _fit_error(ratios, curve, space, r) > tolerance:
                ok = False
                break
        if ok:
            return float(r)
    return 1.0


@dataclass(frozen=True)
class QualityModel:
    """Measured curves of output quality against kept ratio, and the convex model fitted to them."""

    model_name: str
    fingerprint: str
    metric: str                                  # "cosine" | "token_agreement"
    loss_space: str                              # "one_minus" | "neg_log"
    num_blocks: int
    methods: tuple[str, ...]
    ratios: tuple[float, ...]
    speed: dict[str, float]                      # sigma_m per method
    min_ratio: dict[str, float]
    # curves[method][side][k] = mean quality at each ratio; a side absent at k is absent
    curves: dict[str, dict[str, dict[int, tuple[float, ...]]]]
    # the same layout: the 10th percentile over the calibration sentences, and the worst sentence
    p10: dict[str, dict[str, dict[int, tuple[float, ...]]]] = field(default_factory=dict)
    worst: dict[str, dict[str, dict[int, tuple[float, ...]]]] = field(default_factory=dict)
    # which curves the model is fitted to and predicts: mean | p10 | worst. The planner's floor is on
    # `worst`, the least quality of any calibration answer: a floor on the mean lets single answers
    # fall below it (measured: predicted mean 0.95, a held-out sentence at 0.93)
    statistic: str = "mean"
    family: str = "bert"
    sentences: int = 0                           # calibration sentences measured
    max_tokens: int = MAX_TOKENS
    seconds: float = 0.0                         # how long the measurement took
    _pieces: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.loss_space not in LOSS_SPACES:
            raise ValueError(f"loss_space must be one of {LOSS_SPACES}, got {self.loss_space!r}")
        if self.statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {STATISTICS}, got {self.statistic!r}")
        fitted = {}
        for method in self.methods:
            lo = self.min_ratio[method]
            for side, by_k in self.fitted_curves[method].items():
                for k, curve in by_k.items():
                    fitted[(method, k, side)] = _fit(self.ratios, curve, self.loss_space, lo)
        object.__setattr__(self, "_pieces", fitted)

    @property
    def fitted_curves(self) -> dict:
        return {"mean": self.curves, "p10": self.p10, "worst": self.worst}[self.statistic] or self.curves

    def with_statistic(self, statistic: str) -> "QualityModel":
        """The same measurements, fitted to another statistic over the calibration sentences."""
        return replace(self, statistic=statistic)

    # --- the model -----------------------------------------------------------------------------
    def pieces(self, method: str, k: int, side: str) -> Pieces | None:
        """The fitted loss of one side, loss = max_i (alpha_i + beta_i rho), convex and non-increasing,
        0 at rho = 1; None where that side prunes nothing at k (or k is out of range)."""
        if method not in self.methods:
            raise UsageError(f"no quality curves for prune method {method!r} (measured: {', '.join(self.methods)})")
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        return self._pieces.get((method, int(k), side))

    def loss(self, method: str, k: int, rho_d: float, rho_s: float) -> float:
        """L_d(rho_d) + L_s(rho_s) in this model's loss space (>= 0)."""
        total = 0.0
        for side, rho in (("device", rho_d), ("server", rho_s)):
            pieces = self.pieces(method, k, side)
            if pieces is not None and rho < 1.0:
                total += max(0.0, pieces(float(rho)))
        return total

    def predict(self, method: str, k: int, rho_d: float, rho_s: float) -> float:
        """Predicted quality (cosine or token agreement with the unpruned model: the mean, 10th percentile
        or worst over the calibration sentences, as `statistic` says) in [0, 1]."""
        if not 0 <= int(k) <= self.num_blocks:
            raise UsageError(f"split point {k} is out of range 0..{self.num_blocks}")
        return _quality(self.loss(method, k, rho_d, rho_s), self.loss_space)

    def loss_limit(self, min_quality: float) -> float:
        """The largest total loss whose predicted quality is still >= min_quality (inf for <= 0)."""
        q = float(min_quality)
        if q <= 0.0:
            return math.inf
        if q >= 1.0:
            return 0.0
        return 1.0 - q if self.loss_space == "one_minus" else -math.log(q)

    # --- storage -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        def layout(curves):
            return {m: {side: {str(k): list(v) for k, v in sorted(by_k.items())} for side, by_k in sides.items()}
                    for m, sides in curves.items()}

        return {"schema": SCHEMA, "model_name": self.model_name, "fingerprint": self.fingerprint,
                "family": self.family, "metric": self.metric, "loss_space": self.loss_space,
                "num_blocks": self.num_blocks, "methods": list(self.methods), "ratios": list(self.ratios),
                "speed": dict(self.speed), "min_ratio": dict(self.min_ratio), "curves": layout(self.curves),
                "p10": layout(self.p10), "worst": layout(self.worst), "sentences": self.sentences, "max_tokens": self.max_tokens,
                "seconds": self.seconds}

    @staticmethod
    def from_dict(d) -> "QualityModel":
        """The model from `to_dict`'s layout; ValueError naming what is wrong with anything else."""
        try:
            return _from_dict(d)
        except ValueError:
            raise
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a quality model: {type(exc).__name__}: {exc}") from exc

    def with_loss_space(self, space: str) -> "QualityModel":
        """The same measurements fitted in another loss space."""
        return replace(self, loss_space=space)


def _from_dict(d) -> QualityModel:
    if not isinstance(d, dict):
        raise ValueError("not a quality model: expected a JSON object")
    if d.get("schema") != SCHEMA:
        raise ValueError(f"quality model schema {d.get('schema')!r}, expected {SCHEMA}")
    num_blocks = int(d["num_blocks"])
    family = str(d.get("family", "bert"))
    methods = tuple(str(m) for m in d["methods"])
    ratios = tuple(float(r) for r in d["ratios"])
    if not ratios or any(not 0.0 < r <= 1.0 for r in ratios) or list(ratios) != sorted(set(ratios)) \
            or ratios[-1] != 1.0:
        raise ValueError(f"ratios must be increasing in (0, 1] and end at 1.0, got {ratios}")
    metric, space = str(d["metric"]), str(d["loss_space"])
    if metric not in METRICS or space not in LOSS_SPACES:
        raise ValueError(f"unknown metric {metric!r} or loss space {space!r}")

    def number(x, where, lo=0.0, hi=1.0):
        x = float(x)
        if not (lo <= x <= hi):
            raise ValueError(f"{where}: {x} is outside [{lo}, {hi}]")
        return x

    def curves_of(raw, name, required):
        out = {}
        for m in methods:
            out[m] = {}
            for side in SIDES:
                want = {k for k in range(num_blocks + 1) if side_present(family, num_blocks, k, side)}
                by_k = raw.get(m, {}).get(side, {})
                got = {int(k) for k in by_k}
                if (required and got != want) or not got <= want:
                    raise ValueError(f"{name}[{m}][{side}]: split points {sorted(got)}, expected {sorted(want)}")
                if not want:
                    continue
                out[m][side] = {}
                for k, values in by_k.items():
                    values = tuple(number(v, f"{name}[{m}][{side}][{k}]") for v in values)
                    if len(values) != len(ratios):
                        raise ValueError(f"{name}[{m}][{side}][{k}]: {len(values)} values for {len(ratios)} ratios")
                    out[m][side][int(k)] = values
        return out

    return QualityModel(
        model_name=str(d["model_name"]), fingerprint=str(d["fingerprint"]), metric=metric, loss_space=space,
        num_blocks=num_blocks, methods=methods, ratios=ratios,
        speed={m: number(d["speed"][m], f"speed[{m}]") for m in methods},
        min_ratio={m: number(d["min_ratio"][m], f"min_ratio[{m}]") for m in methods},
        curves=curves_of(d["curves"], "curves", True), p10=curves_of(d.get("p10", {}), "p10", False),
        worst=curves_of(d.get("worst", {}), "worst", False),
        family=family, sentences=int(d.get("sentences", 0)), max_tokens=int(d.get("max_tokens", MAX_TOKENS)),
        seconds=float(d.get("seconds", 0.0)))


# --- measuring ------------------------------------------------------------------------------------

def check_ratios(ratios) -> tuple[float, ...]:
    try:
        values = sorted({round(float(r), 6) for r in ratios} | {1.0})
    except (TypeError, ValueError) as exc:
        raise UsageError(f"ratios must be numbers in (0, 1], got {ratios!r}") from exc
    if any(not 0.0 < r <= 1.0 for r in values) or len(values) < 2:
        raise UsageError(f"ratios must be in (0, 1] with at least one below 1, got {list(ratios)!r}")
    return tuple(values)


def check_methods(methods) -> tuple[str, ...]:
    from coinfer.pruning import check_method

    methods = tuple(dict.fromkeys(check_method(str(m).strip()) for m in methods))
    if not methods:
        raise UsageError("give at least one prune method")
    return methods


class _Stack:
    """One model, twice: an unpruned copy and a pruned copy (one Pruner per block, one for BART's
    decoder), so prefix- and suffix-pruned outputs are computed from cached unpruned hidden states."""

    def __init__(self, src, cache_size: int):
        import torch  # noqa: F401

        from coinfer.pruning import Pruner
        from coinfer.split import EncoderSegment, build_generator, decoder_linear_layers

        self.src = src
        L = self.num_blocks = src.num_blocks
        self.dense = EncoderSegment(src, 0, L, with_embedding=True)
        self.pruned_blocks = copy.deepcopy(self.dense.blocks)
        self.block_pruners = []
        for i, block in enumerate(self.pruned_blocks):
            prefix = src.block_prefix(i)
            layers = {prefix + name: m for name, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
            self.block_pruners.append(Pruner(layers, seed=src.seed, cache_size=cache_size, head_dim=src.head_dim))
        self.dense_gen = self.pruned_gen = self.gen_pruner = None
        if src.family == "bart":
            self.dense_gen = build_generator(src)
            self.pruned_gen = copy.deepcopy(self.dense_gen)
            self.gen_pruner = Pruner(decoder_linear_layers(self.pruned_gen), seed=src.seed, cache_size=cache_size,
                                     head_dim=src.head_dim)

    def apply(self, rho: float, method: str) -> None:
        for pruner in self.block_pruners:
            pruner.apply(rho, method)
        if self.gen_pruner is not None:
            self.gen_pruner.apply(rho, method)


class _Batch:
    """One batch of calibration sentences with its unpruned hidden states and reference output."""

    def __init__(self, stack: _Stack, ids, mask):
        import torch

        from coinfer.split import make_attention_mask

        self.ids, self.mask = ids, mask
        with torch.inference_mode():
            hidden = stack.dense.embedding(ids)
            self.block_mask = make_attention_mask(stack.src, hidden, mask)
            bias = stack.dense.position_bias
            self.extra = (bias(hidden),) if bias is not None else ()
            self.hidden = [hidden]                   # hidden[i] = input of block i; hidden[L] = output
            for block in stack.dense.blocks:
                hidden = _block(block, hidden, self.block_mask, self.extra)
                self.hidden.append(hidden)
        self.decoder_ids = None
        if stack.src.family == "bart":
            from transformers.models.bart.modeling_bart import shift_tokens_right

            config = stack.src.config
            self.decoder_ids = shift_tokens_right(ids, config.pad_token_id, config.decoder_start_token_id)
        self.reference = self._head(stack, self.hidden[-1], pruned=False)

    def _head(self, stack: _Stack, hidden, pruned: bool):
        import torch

        from coinfer.split import pool

        with torch.inference_mode():
            if stack.src.family != "bart":
                return pool(hidden, self.mask, stack.src.pooling.mode, stack.src.pooling.normalize).float()
            from transformers.modeling_outputs import BaseModelOutput

            gen = stack.pruned_gen if pruned else stack.dense_gen
            logits = gen(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), attention_mask=self.mask,
                         decoder_input_ids=self.decoder_ids).logits
            return logits.argmax(-1)

    def quality(self, stack: _Stack, hidden, pruned_head: bool) -> list[float]:
        """Per-sentence quality of the output computed from final hidden states `hidden`."""
        import torch

        out = self._head(stack, hidden, pruned_head)
        if stack.src.family != "bart":
            return torch.nn.functional.cosine_similarity(out, self.reference, dim=-1).clamp(-1, 1).tolist()
        valid = self.mask.bool()
        agree = ((out == self.reference) & valid).sum(1).float() / valid.sum(1).clamp(min=1).float()
        return agree.tolist()


def _block(block, hidden, mask, extra):
    out = block(hidden, mask, *extra)
    return out[0] if isinstance(out, tuple) else out


def _run(blocks, hidden, batch: _Batch):
    for block in blocks:
        hidden = _block(block, hidden, batch.block_mask, batch.extra)
    return hidden


def _batches(src, sentences, max_tokens: int, batch_size: int):
    """Token batches of sentences sorted by length (little padding); the order the qualities come in."""
    lengths = [len(ids) for ids in src.tokenizer(list(sentences), truncation=True, max_length=max_tokens)["input_ids"]]
    order = sorted(range(len(sentences)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:  # a new batch when full or when padding to this length would waste a quarter
        if not groups or len(groups[-1]) >= batch_size or lengths[i] > 1.3 * lengths[groups[-1][0]] + 2:
            groups.append([])
        groups[-1].append(i)
    return [src.tokenize([sentences[i] for i in g], max_length=max_tokens) for g in groups]


def _stats(values: list[float]) -> tuple[float, float]:
    import numpy as np

    return float(np.mean(values)), float(np.percentile(values, 10)), float(np.min(values))


def _timing_input(stack: _Stack, batches: list[_Batch], i: int, tokens: int = SPEED_TOKENS):
    """Block i's input for timing: the largest calibration batch, repeated up to about `tokens` tokens,
    so that the matrix products, not per-call overhead, dominate the time."""
    from coinfer.split import make_attention_mask

    big = max(batches, key=lambda b: b.ids.numel())
    times = max(1, -(-tokens // big.ids.numel()))
    hidden, mask = big.hidden[i].repeat(times, 1, 1), big.mask.repeat(times, 1)
    bias = stack.dense.position_bias
    return hidden, make_attention_mask(stack.src, hidden, mask), ((bias(hidden),) if bias is not None else ())


def measure_speed(block, pruner, hidden, mask, extra=(), method: str = "structured", rho: float = SPEED_RATIO,
                  repeats: int = SPEED_REPEATS) -> float:
    """sigma: the share of `block`'s time that shrinks with rho, from time(rho)/time(1) = 1 - sigma (1 - rho);
    the fastest of `repeats` interleaved timings (on a shared machine contention only ever adds time: the
    minimum is the work, a median can be the neighbours'), clamped to [0, 1]. Leaves the block unpruned."""
    import torch

    times = {1.0: [], rho: []}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # on a shared machine, threaded timings of small kernels time the scheduler
    try:
        with torch.inference_mode():
            for r in (1.0, rho):  # warm-up (and the ranking, cached by the pruner)
                pruner.apply(r, method)
                _block(block, hidden, mask, extra)
            for _ in range(repeats):
                for r in (1.0, rho):
                    pruner.apply(r, method)
                    started = time.perf_counter()
                    _block(block, hidden, mask, extra)
                    times[r].append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
        pruner.apply(1.0, method)
    t1, tr = min(times[1.0]), min(times[rho])
    sigma = (1.0 - tr / t1) / (1.0 - rho) if t1 > 0 else 0.0
    return float(min(1.0, max(0.0, sigma)))


def measure_quality(src, sentences=None, methods=DEFAULT_METHODS, ratios=DEFAULT_RATIOS,
                    progress: Callable[[str], None] | None = None, loss_space: str = DEFAULT_LOSS_SPACE,
                    max_tokens: int = MAX_TOKENS, batch_size: int = BATCH_SIZE,
                    speed_repeats: int = SPEED_REPEATS) -> QualityModel:
    """Run `sentences` (default: the calibration set) through `src` (a coinfer.models.ModelSource) with
    each method's prefix and suffix pruned at each ratio, and fit the quality model (module docstring)."""
    import torch

    from coinfer.planner.calibration import CALIBRATION_SENTENCES

    started = time.perf_counter()
    if loss_space not in LOSS_SPACES:
        raise UsageError(f"loss space must be one of {', '.join(LOSS_SPACES)}, got {loss_space!r}")
    methods, ratios = check_methods(methods), check_ratios(ratios)
    sentences = list(CALIBRATION_SENTENCES if sentences is None else sentences)
    if not sentences or not all(isinstance(s, str) and s.strip() for s in sentences):
        raise UsageError("calibration sentences must be non-empty strings (at least one)")
    say = progress or (lambda message: None)
    L, family = src.num_blocks, src.family
    stack = _Stack(src, cache_size=len(ratios) + 1)
    batches = [_Batch(stack, ids, mask) for ids, mask in _batches(src, sentences, max_tokens, batch_size)]

    sides = {side: [k for k in range(L + 1) if side_present(family, L, k, side)] for side in SIDES}
    # per-sentence qualities: raw[method][side][k][ratio index] = list over sentences
    raw = {m: {side: {k: [[] for _ in ratios] for k in ks} for side, ks in sides.items()} for m in methods}
    speed = {}
    with torch.inference_mode():
        for method in methods:
            for j, rho in enumerate(ratios):
                say(f"{method} rho={rho:g} ({j + 1}/{len(ratios)}): device k=1..{L}, server k=0..{max(sides['server'])}")
                if rho >= 1.0:
                    n = len(sentences)
                    for side, ks in sides.items():
                        for k in ks:
                            raw[method][side][k][j] = [1.0] * n
                    continue
                stack.apply(rho, method)
                for batch in batches:
                    pruned = batch.hidden[0]
                    for k in range(1, L + 1):        # device side: blocks [0, k) pruned
                        pruned = _block(stack.pruned_blocks[k - 1], pruned, batch.block_mask, batch.extra)
                        out = _run(stack.dense.blocks[k:], pruned, batch)
                        raw[method]["device"][k][j].extend(batch.quality(stack, out, pruned_head=False))
                    for k in sides["server"]:        # server side: blocks [k, L) (and the decoder) pruned
                        if k == 0 and family != "bart":  # all blocks pruned: the device side at k = L
                            raw[method]["server"][0][j].extend(raw[method]["device"][L][j][-len(batch.ids):])
                            continue
                        out = _run(stack.pruned_blocks[k:], batch.hidden[k], batch)
                        raw[method]["server"][k][j].extend(batch.quality(stack, out, pruned_head=True))
            stack.apply(1.0, method)
            say(f"{method}: timing one block at rho={SPEED_RATIO:g} against 1")
            i = L // 2
            hidden, mask, extra = _timing_input(stack, batches, i)
            speed[method] = measure_speed(stack.pruned_blocks[i], stack.block_pruners[i], hidden, mask, extra,
                                          method, repeats=speed_repeats)

    curves = {m: {side: {} for side in SIDES if sides[side]} for m in methods}
    p10 = {m: {side: {} for side in SIDES if sides[side]} for m in methods}
    worst = {m: {side: {} for side in SIDES if sides[side]} for m in methods}
    for m in methods:
        for side, ks in sides.items():
            for k in ks:
                stats = [_stats(values) for values in raw[m][side][k]]
                curves[m][side][k] = tuple(min(1.0, max(0.0, s[0])) for s in stats)
                p10[m][side][k] = tuple(min(1.0, max(0.0, s[1])) for s in stats)
                worst[m][side][k] = tuple(min(1.0, max(0.0, s[2])) for s in stats)
    min_ratio = {m: choose_min_ratio(ratios, [c for by_k in curves[m].values() for c in by_k.values()], loss_space)
                 for m in methods}
    return QualityModel(model_name=src.name, fingerprint=src.fingerprint,
                        metric="token_agreement" if family == "bart" else "cosine", loss_space=loss_space,
                        num_blocks=L, methods=methods, ratios=ratios, speed=speed, min_ratio=min_ratio,
                        curves=curves, p10=p10, worst=worst, family=family, sentences=len(sentences), max_tokens=max_tokens,
                        seconds=round(time.perf_counter() - started, 3))


# --- the cache ------------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    """$COINFER_CACHE_DIR, else ~/.cache/coinfer/quality."""
    env = os.environ.get("COINFER_CACHE_DIR")
    return Path(os.path.expanduser(env)) if env else Path.home() / ".cache" / "coinfer" / "quality"


def cache_path(src, cache_dir=None, **kw) -> Path:
    """One JSON file per model fingerprint and measurement settings."""
    from coinfer.planner.calibration import CALIBRATION_SENTENCES

    settings = {
        "methods": list(check_methods(kw.get("methods", DEFAULT_METHODS))),
        "ratios": list(check_ratios(kw.get("ratios", DEFAULT_RATIOS))),
        "sentences": list(kw.get("sentences") or CALIBRATION_SENTENCES),
        "loss_space": kw.get("loss_space", DEFAULT_LOSS_SPACE),
        "max_tokens": kw.get("max_tokens", MAX_TOKENS),
        "schema": SCHEMA,
    }
    digest = hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=6).hexdigest()
    folder = Path(os.path.expanduser(str(cache_dir))) if cache_dir is not None else default_cache_dir()
    return folder / f"{src.fingerprint}-{digest}.json"


def load_or_measure(src, cache_dir=None, refresh: bool = False, **kw) -> QualityModel:
    """The quality model of `src` from the cache (cache_dir, default `default_cache_dir()`), measured
    (measure_quality(src, **kw)) and stored when it is not there, when `refresh`, or when the cached file
    is unreadable or not this model's (then with a warning)."""
    path = cache_path(src, cache_dir, **kw)
    folder = path.parent
    if path.exists() and not refresh:
        try:
            model = QualityModel.from_dict(json.loads(path.read_text()))
            if model.fingerprint != src.fingerprint:
                raise ValueError(f"it is the model with fingerprint {model.fingerprint}, not {src.fingerprint}")
            return model
        except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            warnings.warn(f"quality cache {path} is unusable ({exc}); measuring again", RuntimeWarning, stacklevel=2)
    model = measure_quality(src, **kw)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(model.to_dict(), indent=1))
        os.replace(tmp, path)
    except OSError as exc:
        print(f"coinfer: could not write the quality cache {path}: {exc}", file=sys.stderr)
    return model


# --- checking one plan ----------------------------------------------------------------------------

class QualityCheck:
    """Measures the quality of one exact plan (k, method, rho_d, rho_s) on the calibration sentences,
    through the same pruned blocks as the curves: the planner's check on its own prediction.

    A convex fit cannot follow structured pruning's first step (removing the first whole head costs
    more than the chord from the nearest grid point says): measured on MiniLM, a plan predicted at
    0.968 (worst calibration answer) measured 0.947. So a plan is measured before it is pushed."""

    def __init__(self, src, sentences=None, max_tokens: int = MAX_TOKENS, batch_size: int = BATCH_SIZE):
        from coinfer.planner.calibration import CALIBRATION_SENTENCES

        self.src = src
        self._sentences = list(CALIBRATION_SENTENCES if sentences is None else sentences)
        self._sizes = (max_tokens, batch_size)
        self.stack = self.batches = None   # built at the first check: a planner that never prunes never pays
        self._memo: dict[tuple, tuple[float, float]] = {}

    def _build(self) -> None:
        import torch

        self.stack = _Stack(self.src, cache_size=4)
        with torch.inference_mode():
            self.batches = [_Batch(self.stack, ids, mask)
                            for ids, mask in _batches(self.src, self._sentences, *self._sizes)]

    def measure(self, method: str, k: int, rho_d: float, rho_s: float) -> tuple[float, float]:
        """(mean, worst) quality over the calibration sentences of this exact plan."""
        import torch

        key = (method, int(k), round(float(rho_d), 6), round(float(rho_s), 6))
        if key in self._memo:
            return self._memo[key]
        if self.stack is None:
            self._build()
        stack, L = self.stack, self.stack.num_blocks
        for i, pruner in enumerate(stack.block_pruners):
            pruner.apply(rho_d if i < k else rho_s, method)
        if stack.gen_pruner is not None:
            stack.gen_pruner.apply(rho_s, method)
        values: list[float] = []
        try:
            with torch.inference_mode():
                for batch in self.batches:
                    out = _run(stack.pruned_blocks[:L], batch.hidden[0], batch)
                    values.extend(batch.quality(stack, out, pruned_head=stack.gen_pruner is not None))
        finally:
            stack.apply(1.0, method)
        mean, _, worst = _stats(values)
        self._memo[key] = (min(1.0, mean), min(1.0, worst))
        return self._memo[key]
