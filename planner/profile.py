"""What the planner needs to know about a model, for a batch size and sequence length.

What is counted (and what is not):

* FLOPs are matrix-multiply FLOPs, 2 per multiply-add: every Linear layer (Q, K, V, O, FFN in/out) plus
  the attention products Q K^T and A V. Bias adds, LayerNorm, softmax, GELU and embedding lookups are
  left out (O(n h) against O(n h^2)). BERT-base at 1 x 128 tokens: 21.74 GFLOPs in the Linear layers
  (the paper's 21.77 GFLOPs counts these) + 0.60 GFLOPs of attention products = 22.35 GFLOPs.
* A BART encoder-decoder splits only its encoder; the decoder runs on the server as part of the head:
  one teacher-forced pass over `decoder_len` tokens (decoder Linears, self/cross-attention products,
  and the LM head projection).
* Parameters: `params_total` counts every weight coinfer runs (embedding, blocks, BART's decoder; the
  shared embedding once); BertModel's pooler, which coinfer does not run, is `pooler_params`.
  BERT-base: 109,482,240 with the pooler = the paper's 109.48 M; BART-base: 139,420,416 = 139.42 M. A segment's N_j counts its *prunable* weights: the Linear matrices of its
  blocks (the runtime prunes exactly those; embeddings, LayerNorm and biases stay), and b_j is their
  mean |w|, so a_j = N_j b_j is the segment's L1 mass.
* Hidden states at split k (1 <= k, and k = L for BART) are batch x seq x hidden elements in the
  activation codec (its real layout, from coinfer.codecs); k = 0 sends the token ids; k = L of BERT sends nothing.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from coinfer.planner.distortion import CURVE_RATIOS, curve_of, measure_l1_curve
from coinfer.planner.scenario import Scenario, Segment
from coinfer.system import System

INPUT_ID_BITS = 64          # token ids leave the tokenizer as int64 and travel RAW


def activation_bits(batch: int, seq: int, hidden: int, codec: str) -> float:
    """Bits on the wire for [batch, seq, hidden] activations: the codec's own layout, scales included."""
    from coinfer.codecs import CODECS, codec_bits_per_element

    if codec not in CODECS:
        from coinfer.errors import UsageError
        raise UsageError(f"--codec: unknown activation codec {codec!r} (one of {', '.join(CODECS)})")
    return batch * seq * hidden * codec_bits_per_element(codec, hidden)


# ---------------------------------------------------------------------------------------------
# analytic counts from a transformers config

def _dims(config, family: str) -> dict:
    if family == "bart":
        return {"h": config.d_model, "ffn": config.encoder_ffn_dim, "dec_ffn": config.decoder_ffn_dim,
                "layers": config.encoder_layers, "dec_layers": config.decoder_layers,
                "vocab": config.vocab_size, "max_pos": config.max_position_embeddings}
    return {"h": config.hidden_size, "ffn": config.intermediate_size, "layers": config.num_hidden_layers,
            "vocab": config.vocab_size, "max_pos": config.max_position_embeddings,
            "type_vocab": getattr(config, "type_vocab_size", 0)}


def encoder_block_flops(batch: int, seq: int, h: int, ffn: int) -> tuple[float, float]:
    """(Linear FLOPs, attention-product FLOPs) of one encoder block."""
    linear = 2.0 * batch * seq * (4 * h * h + 2 * h * ffn)
    attention = 2.0 * batch * 2 * seq * seq * h
    return linear, attention


def decoder_flops(batch: int, m: int, n: int, d: int, ffn: int, layers: int, vocab: int) -> tuple[float, float]:
    """(Linear incl. LM head, attention products) of a decoder pass over m tokens, encoder length n."""
    per_layer_linear = m * (4 * d * d + 2 * d * d + 2 * d * ffn) + n * 2 * d * d   # self, cross q/o, ffn; cross k/v
    per_layer_attn = 2 * m * m * d + 2 * m * n * d
    linear = 2.0 * batch * (layers * per_layer_linear + m * d * vocab)
    return linear, 2.0 * batch * layers * per_layer_attn


def config_params(config, family: str) -> dict:
    """Parameter counts from the config alone: embedding, one block, head (decoder), pooler; prunable."""
    d = _dims(config, family)
    h, ffn = d["h"], d["ffn"]
    attn = 4 * (h * h + h)
    block = attn + (h * ffn + ffn) + (ffn * h + h) + 4 * h       # two LayerNorms
    out = {"block": block, "block_prunable": 4 * h * h + 2 * h * ffn}
    if family == "bart":
        f2 = d["dec_ffn"]
        pos = (d["max_pos"] + 2) * h    # BART's learned positions carry an offset of 2
        out["embedding"] = d["vocab"] * h + pos + 2 * h
        dec_block = 2 * attn + (h * f2 + f2) + (f2 * h + h) + 6 * h
        out["head"] = d["dec_layers"] * dec_block + pos + 2 * h
        out["head_prunable"] = d["dec_layers"] * (8 * h * h + 2 * h * f2)
        out["pooler"] = 0
    else:
        out["embedding"] = (d["vocab"] + d["max_pos"] + d["type_vocab"]) * h + 2 * h
        out["head"] = out["head_prunable"] = 0
        out["pooler"] = h * h + h
    return out


# ---------------------------------------------------------------------------------------------

@dataclass
class ModelProfile:
    name: str
    family: str
    num_blocks: int
    hidden_size: int
    batch: int
    seq_len: int
    decoder_len: int
    block_linear_flops: list[float]
    block_attention_flops: list[float]
    head_flops: float                  # server side always (BART decoder + LM head); 0 for BERT
    params_total: int
    embedding_params: int
    block_params: list[int]
    head_params: int
    pooler_params: int                 # BERT's pooler: in BertModel, not run by coinfer (mean pooling)
    block_prunable: list[int]
    head_prunable: int
    block_l1: list[float]              # sum |w| over the prunable weights
    head_l1: float
    weights: str                       # "loaded" or "config" (Laplace scales from initializer_range)
    curve_ratios: list[float] | None = None
    block_curves: list[list[float]] | None = None    # L1 removed at each ratio, per block
    head_curve: list[float] | None = None
    input_id_bits: int = INPUT_ID_BITS

    @property
    def block_flops(self) -> list[float]:
        return [a + b for a, b in zip(self.block_linear_flops, self.block_attention_flops)]

    @property
    def total_flops(self) -> float:
        return sum(self.block_flops) + self.head_flops

    def sent_bits(self, k: int, codec: str = "fp32") -> float:
        """S at split k."""
        self._check_split(k)
        if k == 0:
            return float(self.batch * self.seq_len * self.input_id_bits)
        if k == self.num_blocks and self.family != "bart":
            return 0.0
        return float(activation_bits(self.batch, self.seq_len, self.hidden_size, codec))

    def _check_split(self, k: int) -> None:
        if not 0 <= k <= self.num_blocks:
            from coinfer.errors import UsageError
            raise UsageError(f"--split: split point {k} out of range 0..{self.num_blocks} for {self.name}")

    def segments(self, k: int) -> tuple[Segment, Segment]:
        """(device, server) segments at split k; the server's includes the head."""
        self._check_split(k)
        bf = self.block_flops
        dev_idx, srv_idx = range(0, k), range(k, self.num_blocks)

        def seg(idx, with_head: bool) -> Segment:
            flops = sum(bf[i] for i in idx) + (self.head_flops if with_head else 0.0)
            n = sum(self.block_prunable[i] for i in idx) + (self.head_prunable if with_head else 0)
            l1 = sum(self.block_l1[i] for i in idx) + (self.head_l1 if with_head else 0.0)
            curve = None
            if self.block_curves is not None and n > 0:
                removed = [sum(self.block_curves[i][r] for i in idx) + (self.head_curve[r] if with_head else 0.0)
                           for r in range(len(self.curve_ratios))]
                curve = curve_of(self.curve_ratios, removed)
            return Segment(flops, float(n), l1 / n if n else 0.0, curve)

        return seg(dev_idx, False), seg(srv_idx, self.family == "bart")

    def scenario(self, system: System, k: int, codec: str = "fp32") -> Scenario:
        dev, srv = self.segments(k)
        return Scenario(system, dev, srv, self.sent_bits(k, codec), split=k)

    def summary(self) -> dict:
        d = asdict(self)
        for key in ("block_curves", "head_curve", "curve_ratios"):
            d.pop(key)
        d["block_flops"] = self.block_flops
        d["total_flops"] = self.total_flops
        d["measured_curves"] = self.block_curves is not None
        return d


def profile_from_config(config, family: str, name: str, batch: int = 1, seq_len: int = 128,
                        decoder_len: int | None = None) -> ModelProfile:
    """A profile from the config alone: weights' Laplace scale b = initializer_range * sqrt(2/pi)."""
    d = _dims(config, family)
    m = seq_len if decoder_len is None else decoder_len
    lin, att = encoder_block_flops(batch, seq_len, d["h"], d["ffn"])
    head = 0.0
    if family == "bart":
        head = sum(decoder_flops(batch, m, seq_len, d["h"], d["dec_ffn"], d["dec_layers"], d["vocab"]))
    p = config_params(config, family)
    L = d["layers"]
    std = float(getattr(config, "initializer_range", getattr(config, "init_std", 0.02)))
    b = std * math.sqrt(2 / math.pi)   # mean |w| of N(0, std^2), how untrained weights are drawn
    return ModelProfile(
        name=name, family=family, num_blocks=L, hidden_size=d["h"], batch=batch, seq_len=seq_len,
        decoder_len=m if family == "bart" else 0,
        block_linear_flops=[lin] * L, block_attention_flops=[att] * L, head_flops=head,
        params_total=p["embedding"] + L * p["block"] + p["head"],
        embedding_params=p["embedding"], block_params=[p["block"]] * L, head_params=p["head"],
        pooler_params=p["pooler"],
        block_prunable=[p["block_prunable"]] * L, head_prunable=p["head_prunable"],
        block_l1=[p["block_prunable"] * b] * L, head_l1=p["head_prunable"] * b, weights="config")


def _prunable(name: str, t) -> bool:
    # Linear matrices only: embeddings (token, position; BART's shared one is also the LM head) stay.
    return t.ndim == 2 and not any(s in name for s in ("embed", "shared", "lm_head"))


def tensor_stats(tensors: dict, ratios=None) -> dict:
    """Counts and L1 mass of a dict of named tensors, and (with ratios) the magnitude-pruning curve."""
    prunable = [t for n, t in tensors.items() if _prunable(n, t)]
    out = {"params": int(sum(t.numel() for t in tensors.values())),
           "prunable": int(sum(t.numel() for t in prunable)),
           "l1": float(sum(float(t.detach().abs().double().sum()) for t in prunable))}
    if ratios is not None:
        _, removed, _ = measure_l1_curve(prunable, ratios)
        out["curve"] = removed
    return out


# BART's head tensors repeat the shared token embedding (also the LM head), counted in the embedding;
# final_logits_bias is a buffer.
_TIED = ("model.shared.weight", "model.decoder.embed_tokens.weight", "lm_head.weight", "final_logits_bias")


def profile_model(src, batch: int = 1, seq_len: int = 128, decoder_len: int | None = None,
                  measure_curves: bool = False) -> ModelProfile:
    """The profile of a loaded model (coinfer.models.ModelSource): analytic FLOPs, and counts, L1
    masses and (if asked) magnitude-pruning curves from its actual weights, block by block."""
    prof = profile_from_config(src.config, src.family, src.name, batch, seq_len, decoder_len)
    ratios = list(CURVE_RATIOS) if measure_curves else None
    from coinfer.split import block_tensors, embedding_tensors, head_tensors

    blocks = [tensor_stats(block_tensors(src, i), ratios) for i in range(prof.num_blocks)]
    head = tensor_stats({n: t for n, t in head_tensors(src).items() if n not in _TIED}, ratios)
    prof.block_params = [s["params"] for s in blocks]
    prof.block_prunable = [s["prunable"] for s in blocks]
    prof.block_l1 = [s["l1"] for s in blocks]
    prof.head_params, prof.head_prunable, prof.head_l1 = head["params"], head["prunable"], head["l1"]
    prof.embedding_params = sum(int(t.numel()) for t in embedding_tensors(src).values())
    prof.params_total = prof.embedding_params + sum(prof.block_params) + prof.head_params
    prof.weights = "loaded"
    if measure_curves:
        prof.curve_ratios = ratios
        prof.block_curves = [s["curve"] for s in blocks]
        prof.head_curve = head["curve"] if head["prunable"] else [0.0] * len(ratios)
    return prof
