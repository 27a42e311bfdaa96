"""Megatron-style tensor parallelism of the device half: one rank's shard of each encoder block.

Rank i holds a contiguous run of h_i attention heads and c_i FFN intermediate columns of every block
(any h_i, c_i >= 0, so the planner can assign by compute). Per block:

    attention:  Q, K, V = x W_{q,k,v}[rows of my heads]^T + b[my heads]     column-parallel
                ctx     = softmax(Q K^T / sqrt(d) + mask) V                    (my heads only)
                partial = ctx W_o[:, my heads' columns]^T                      row-parallel, no bias
                x1      = LayerNorm(x + all_reduce(partial) + b_o)             bias once, after the sum
    FFN:        partial = act(x1 W_1[my columns]^T + b_1[my columns]) W_2[:, my columns]^T
                x2      = LayerNorm(x1 + all_reduce(partial) + b_2)

which is BERT's layer and BART's encoder layer alike (both post-LN; dropout is off at inference).
The embedding stage and the LayerNorms are replicated: every rank holds them and computes them.

Weights come from the checkpoint by canonical name (coinfer.models). From a safetensors checkpoint
each rank reads only its own rows/columns (safetensors slices); random-weight models are generated
whole by name and then sliced, because their values are defined for the whole tensor.

A sub-layer is exposed as partial -> finish, so the same block runs under torch.distributed (the
forward below, with an all-reduce callable) or with every shard in one process (tests).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from coinfer.errors import UsageError
from coinfer.models import ModelSource

# all_reduce(partial, tag) -> the sum over ranks (a new tensor or the same one, summed in place)
AllReduce = Callable[[torch.Tensor, str], torch.Tensor]


@dataclass(frozen=True)
class Shard:
    """What one rank holds of every block: heads [heads.start, heads.stop), columns likewise."""

    rank: int
    heads: range
    columns: range


def shards(heads: Sequence[int], columns: Sequence[int]) -> list[Shard]:
    """Contiguous shards in rank order for per-rank head and column counts."""
    if len(heads) != len(columns):
        raise UsageError(f"{len(heads)} head counts but {len(columns)} column counts")
    out, h0, c0 = [], 0, 0
    for rank, (h, c) in enumerate(zip(heads, columns)):
        if h < 0 or c < 0:
            raise UsageError(f"rank {rank}: head and column counts must be >= 0, got {h}, {c}")
        out.append(Shard(rank, range(h0, h0 + h), range(c0, c0 + c)))
        h0, c0 = h0 + h, c0 + c
    return out


# Canonical tensor names (after the block prefix) of the parts of one block, per family.
_NAMES = {
    "bert": {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "o": "attention.output.dense", "ln1": "attention.output.LayerNorm",
             "fc1": "intermediate.dense", "fc2": "output.dense", "ln2": "output.LayerNorm"},
    "bart": {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
             "o": "self_attn.out_proj", "ln1": "self_attn_layer_norm",
             "fc1": "fc1", "fc2": "fc2", "ln2": "final_layer_norm"},
}


def block_hyperparameters(src: ModelSource) -> dict:
    c = src.config
    if src.family == "bart":
        return {"hidden": int(c.d_model), "heads": int(c.encoder_attention_heads), "ffn": int(c.encoder_ffn_dim),
                "act": c.activation_function, "eps": 1e-5}  # BartEncoderLayer: nn.LayerNorm's default eps
    return {"hidden": int(c.hidden_size), "heads": int(c.num_attention_heads), "ffn": int(c.intermediate_size),
            "act": c.hidden_act, "eps": float(c.layer_norm_eps)}


def read_slices(src: ModelSource, wanted: dict[str, tuple[tuple[int, ...], int, range]]) -> dict[str, torch.Tensor]:
    """name -> (full shape, dim, index range): that slice of the tensor along dim, as float32."""
    if src.is_random:
        full = src.read({name: torch.empty(shape) for name, (shape, _, _) in wanted.items()})
        return {name: full[name].narrow(dim, idx.start, len(idx)).contiguous().float()
                for name, (_, dim, idx) in wanted.items()}
    from safetensors import safe_open

    out = {}
    # ModelSource maps canonical names to (file, key) but reads whole tensors; the slices are read here.
    index = src._checkpoint_index
    for name, (shape, dim, idx) in wanted.items():
        if name not in index:
            raise UsageError(f"{src.folder}: the checkpoint has no tensor {name!r}")
        file, key = index[name]
        with safe_open(str(file), framework="pt") as reader:
            handle = reader.get_slice(key)
            stored = tuple(handle.get_shape())
            if stored != tuple(shape):
                raise UsageError(f"{file}: tensor {name} has shape {stored}, config expects {tuple(shape)}")
            cut = (slice(idx.start, idx.stop),) if dim == 0 else (slice(None), slice(idx.start, idx.stop))
            out[name] = handle[cut].float().contiguous()
    return out


class ShardedBlock(nn.Module):
    """One rank's shard of encoder block `index`."""

    def __init__(self, src: ModelSource, index: int, shard: Shard):
        super().__init__()
        from transformers.activations import ACT2FN

        hp = block_hyperparameters(src)
        hidden, heads, ffn = hp["hidden"], hp["heads"], hp["ffn"]
        if shard.heads.stop > heads or shard.columns.stop > ffn:
            raise UsageError(f"rank {shard.rank}: heads {shard.heads} / columns {shard.columns} exceed the "
                             f"model's {heads} heads / {ffn} FFN columns")
        self.head_dim = hidden // heads
        self.n_heads, self.hidden = len(shard.heads), hidden
        self.act = ACT2FN[hp["act"]]
        names = {part: src.block_prefix(index) + name for part, name in _NAMES[src.family].items()}
        rows = range(shard.heads.start * self.head_dim, shard.heads.stop * self.head_dim)
        cols = shard.columns
        want = {}
        for part in ("q", "k", "v"):                       # column-parallel: my heads' output rows
            want[names[part] + ".weight"] = ((hidden, hidden), 0, rows)
            want[names[part] + ".bias"] = ((hidden,), 0, rows)
        want[names["o"] + ".weight"] = ((hidden, hidden), 1, rows)   # row-parallel: my heads' input columns
        want[names["fc1"] + ".weight"] = ((ffn, hidden), 0, cols)
        want[names["fc1"] + ".bias"] = ((ffn,), 0, cols)
        want[names["fc2"] + ".weight"] = ((hidden, ffn), 1, cols)
        everything = range(hidden)                           # replicated: output biases and LayerNorms
        for name in (names["o"] + ".bias", names["fc2"] + ".bias"):
            want[name] = ((hidden,), 0, everything)
        for part in ("ln1", "ln2"):
            for leaf in ("weight", "bias"):
                want[f"{names[part]}.{leaf}"] = ((hidden,), 0, everything)
        t = read_slices(src, want)
        w = lambda part, leaf="weight": nn.Parameter(t[f"{names[part]}.{leaf}"], requires_grad=False)  # noqa: E731
        # Q, K and V stay three matmuls, as in transformers: one fused matmul rounds differently, and
        # the 1e-5 exactness budget is close to float32's own error after a few MiniLM blocks.
        self.q_weight, self.q_bias = w("q"), w("q", "bias")
        self.k_weight, self.k_bias = w("k"), w("k", "bias")
        self.v_weight, self.v_bias = w("v"), w("v", "bias")
        self.o_weight, self.o_bias = w("o"), w("o", "bias")
        self.fc1_weight, self.fc1_bias = w("fc1"), w("fc1", "bias")
        self.fc2_weight, self.fc2_bias = w("fc2"), w("fc2", "bias")
        self.ln1 = nn.LayerNorm(hidden, eps=hp["eps"])
        self.ln2 = nn.LayerNorm(hidden, eps=hp["eps"])
        with torch.no_grad():
            for part, ln in (("ln1", self.ln1), ("ln2", self.ln2)):
                ln.weight.copy_(t[names[part] + ".weight"])
                ln.bias.copy_(t[names[part] + ".bias"])
        self.requires_grad_(False).eval()

    def attention_partial(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """My heads' share of the attention output projection, [batch, seq, hidden], bias not added."""
        if self.n_heads == 0:
            return x.new_zeros(x.shape)
        batch, seq, _ = x.shape
        q, k, v = (F.linear(x, weight, bias).view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)
                   for weight, bias in ((self.q_weight, self.q_bias), (self.k_weight, self.k_bias),
                                        (self.v_weight, self.v_bias)))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, scale=self.head_dim ** -0.5)
        ctx = ctx.transpose(1, 2).reshape(batch, seq, self.n_heads * self.head_dim)
        return F.linear(ctx, self.o_weight)

    def attention_finish(self, reduced: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.ln1((reduced + self.o_bias) + x)  # transformers' order: (dense + bias) + residual

    def ffn_partial(self, x1: torch.Tensor) -> torch.Tensor:
        if self.fc1_weight.shape[0] == 0:
            return x1.new_zeros(x1.shape)
        return F.linear(self.act(F.linear(x1, self.fc1_weight, self.fc1_bias)), self.fc2_weight)

    def ffn_finish(self, reduced: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return self.ln2((reduced + self.fc2_bias) + x1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, all_reduce: AllReduce, tag: str = "") -> torch.Tensor:
        x1 = self.attention_finish(all_reduce(self.attention_partial(x, mask), f"{tag}attention"), x)
        return self.ffn_finish(all_reduce(self.ffn_partial(x1), f"{tag}ffn"), x1)


def key_padding_mask(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """[batch, seq] 0/1 -> boolean [batch, 1, 1, seq] (True: attend), or None when nothing is padded."""
    if bool(attention_mask.all()):
        return None
    return attention_mask.bool()[:, None, None, :]


class ShardedDevicePart(nn.Module):
    """The device half at split point k as one rank holds it: the embedding stage and blocks [0, k)."""

    def __init__(self, src: ModelSource, k: int, shard: Shard):
        super().__init__()
        from coinfer.split import build_embedding_stage, check_split

        check_split(src, k)
        if k < 1:
            raise UsageError("split point 0 leaves the device no blocks to share: choose k >= 1")
        self.src, self.k, self.shard = src, k, shard
        self.embedding = build_embedding_stage(src)
        self.blocks = nn.ModuleList(ShardedBlock(src, i, shard) for i in range(k))
        # As DevicePart: a BERT-family model split after its last block pools on the device.
        self.runs_alone = src.family == "bert" and k == src.num_blocks

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, all_reduce: AllReduce) -> torch.Tensor:
        from coinfer.split import pool

        hidden = self.embedding(input_ids)
        mask = key_padding_mask(attention_mask)
        for i, block in enumerate(self.blocks):
            hidden = block(hidden, mask, all_reduce, tag=f"block{i}.")
        if self.runs_alone:
            return pool(hidden, attention_mask, self.src.pooling.mode, self.src.pooling.normalize)
        return hidden

    def shard_parameters(self) -> int:
        """Parameters of this rank's block shards (the embedding is replicated and left out)."""
        return sum(p.numel() for p in self.blocks.parameters())
