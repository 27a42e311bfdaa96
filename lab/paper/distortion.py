"""Paper Fig. 3: output distortion against parameter distortion as the pruning ratio falls.

Both distortions are measured, never modelled:

* parameter distortion, as the spec defines it (system-model.md section 3): ||W - W_hat|| over every
  pruned weight matrix, in L1 (the mass the planner's D counts) and in the Frobenius norm (what the
  paper's Theorem III.1 bounds with);
* output distortion on real inputs: the mean over inputs (tokens, for transformers) of
  ||y - y_hat||_2, the model's output before and after pruning.

Each is reported absolute (the paper's reading: Theorem III.1 bounds ||y - y_hat|| by a
pruning-independent constant times ||W - W_hat||, for inputs with ||x|| <= 1) and relative to the
unpruned size (||W - W_hat|| / ||W||, sum ||y - y_hat|| / sum ||y||), which is scale-free.

Pruning is the runtime's (`coinfer.pruning.Pruner`), layer by layer.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class DistortionPoint:
    rho: float
    achieved_ratio: float     # weights kept / weights, over the pruned matrices
    param_l1: float           # ||W - W_hat||_1
    param_fro: float          # ||W - W_hat||_F
    output_l2: float          # mean_i ||y_i - y_hat_i||_2
    param_l1_rel: float       # ||W - W_hat||_1 / ||W||_1
    param_fro_rel: float      # ||W - W_hat||_F / ||W||_F
    output_l2_rel: float      # sum_i ||y_i - y_hat_i||_2 / sum_i ||y_i||_2
    theorem_bound: float | None = None   # FC nets only: Theorem III.1's bound on mean ||y - y_hat||_2

    def to_dict(self) -> dict:
        return asdict(self)


def parameter_distortion(dense: dict[str, torch.Tensor], layers: dict[str, nn.Linear]) -> tuple[float, float, float, float]:
    """(||dW||_1, ||dW||_F, ||W||_1, ||W||_F) over the layers, against their dense copies."""
    d1 = d2 = n1 = n2 = 0.0
    for name, w in dense.items():
        diff = (layers[name].weight.detach() - w).double()
        d1 += float(diff.abs().sum())
        d2 += float(diff.pow(2).sum())
        n1 += float(w.double().abs().sum())
        n2 += float(w.double().pow(2).sum())
    return d1, d2 ** 0.5, n1, n2 ** 0.5


def output_distortion(y: torch.Tensor, y_hat: torch.Tensor) -> tuple[float, float]:
    """(mean ||y_i - y_hat_i||_2, sum ||y_i - y_hat_i|| / sum ||y_i||) over rows i."""
    diff = (y_hat - y).double().norm(dim=-1)
    return float(diff.mean()), float(diff.sum() / y.double().norm(dim=-1).sum())


def prune_curve(layers: dict[str, nn.Linear], outputs, ratios, method: str = "magnitude", seed: int = 0,
                bound=None) -> list[DistortionPoint]:
    """Prune `layers` to each kept ratio (runtime Pruner) and measure both distortions.

    outputs(): the model's outputs on the fixed real inputs, one row per input (or token).
    bound(dense): optional, a theorem's bound on mean ||y - y_hat||_2 at the current pruning.
    """
    from coinfer.pruning import Pruner

    dense = {n: m.weight.detach().clone() for n, m in layers.items()}
    y = outputs()
    pruner = Pruner(layers, seed=seed)
    points = []
    try:
        for rho in ratios:
            state = pruner.apply(float(rho), method)
            d1, d2, n1, n2 = parameter_distortion(dense, layers)
            o2, o2_rel = output_distortion(y, outputs())
            points.append(DistortionPoint(float(rho), state.achieved_ratio, d1, d2, o2, d1 / n1, d2 / n2, o2_rel,
                                          bound(dense) if bound is not None else None))
    finally:
        pruner.apply(1.0)
    return points


# ---------------------------------------------------------------------------------------------
# transformers

def transformer_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linear layers coinfer prunes in a whole model (as WholeModel.prune: every Linear but BART's
    tied LM head and BERT's unused pooler)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name != "lm_head" and not name.startswith("pooler")}


def transformer_outputs(src, whole, sentences: list[str], max_length: int = 64):
    """A closure giving the model's last hidden states at the real tokens, [tokens, hidden].

    BERT family: the encoder's output. BART: the decoder's output, teacher-forced on the input itself
    (BART is a denoising autoencoder), so encoder and decoder both count, as the runtime prunes both.
    """
    ids, mask = src.tokenize(sentences, max_length)
    keep = mask.bool()

    @torch.inference_mode()
    def run() -> torch.Tensor:
        if src.family == "bart":
            from transformers.models.bart.modeling_bart import shift_tokens_right

            dec = shift_tokens_right(ids, src.config.pad_token_id, src.config.decoder_start_token_id)
            hidden = whole.model.model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec,
                                       decoder_attention_mask=mask).last_hidden_state
        else:
            hidden = whole.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden[keep].float()

    return run


def transformer_curve(spec: str, sentences: list[str], ratios, method: str = "magnitude",
                      max_length: int = 64) -> tuple[list[DistortionPoint], dict]:
    """Fig. 3 (c, d) for one model spec (minilm, random:bert-base, ...): points and a description."""
    from coinfer.models import resolve_model
    from coinfer.lab.monolithic import WholeModel

    src = resolve_model(spec)
    whole = WholeModel(src)
    layers = transformer_linears(whole.model)
    points = prune_curve(layers, transformer_outputs(src, whole, sentences, max_length), ratios, method, src.seed)
    info = {"model": spec, "name": src.name, "family": src.family, "random_weights": src.is_random,
            "pruned_matrices": len(layers), "pruned_weights": int(sum(m.weight.numel() for m in layers.values())),
            "inputs": len(sentences)}
    return points, info
