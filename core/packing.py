"""Packed sequences: a padded batch's real tokens computed without its padding.

A batch of sequences of different lengths is padded to the longest; every Linear, LayerNorm and FFN of
an encoder block then works on the padding too. `Packing` gathers the real tokens of a [batch, seq, H]
tensor into one [1, T, H] sequence (T = real tokens in all) so that the blocks' per-token work is on
real tokens only, and scatters the result back. Attention must still stay within each sequence: the
blocks are built with `config._attn_implementation = PACKED_ATTENTION`, an attention function
registered with transformers that reads a `Packing` from its kwargs (transformers' layers pass their
kwargs through to it). On the CPU it runs SDPA once per sequence, on that sequence's slice of q, k and
v: no padded query or key at all, and a call costs microseconds. Elsewhere (CUDA), where a call costs a
kernel launch, it lays q, k and v out per sequence ([batch, heads, longest, d], each sequence from
position 0, the rest masked) for one SDPA call and gathers the answer back to the packed tokens.
Without a `Packing` it is transformers' own sdpa function, so an unpacked call computes as before.

Attention does not depend on where a key sits (positions are added by the embedding stage, before
packing), so each sequence's tokens may be moved to the front of their row: left padding or holes in a
mask are packed away too. Each answer equals the sequence computed alone up to float rounding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

PACKED_ATTENTION = "coinfer_packed"
PACKING_KWARG = "coinfer_packing"
# devices whose packed attention runs one SDPA call per sequence (the others: one call over all rows)
PER_SEQUENCE_DEVICES = ("cpu",)


@dataclass(frozen=True)
class Packing:
    """Where the real tokens of a [batch, seq] 0/1 mask go: `tokens` indexes them in the flattened
    [batch * seq] positions (row-major, so each sequence's tokens are contiguous in the packed order),
    `slots` in the flattened [batch * longest] attention layout, `key_mask` [batch, 1, 1, longest]
    marks the real keys of each row; `lengths` counts each row's real tokens."""

    batch: int
    seq: int
    longest: int
    tokens: torch.Tensor
    slots: torch.Tensor
    key_mask: torch.Tensor
    lengths: tuple[int, ...]

    @property
    def total(self) -> int:
        return int(self.tokens.numel())

    def pack(self, hidden: torch.Tensor) -> torch.Tensor:
        """[batch, seq, H] -> [1, T, H], the real tokens only."""
        return hidden.reshape(self.batch * self.seq, -1).index_select(0, self.tokens).unsqueeze(0)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """[1, T, H] -> [batch, seq, H]; padded positions are zeros (nothing downstream reads them: the
        next blocks, pooling and BART's cross-attention all mask them out)."""
        out = packed.new_zeros(self.batch * self.seq, packed.shape[-1])
        out.index_copy_(0, self.tokens, packed[0])
        return out.view(self.batch, self.seq, -1)

    def to_rows(self, packed: torch.Tensor) -> torch.Tensor:
        """q, k or v as the blocks make them, [1, heads, T, d] -> [batch, heads, longest, d]."""
        per_token = packed[0].transpose(0, 1)  # [T, heads, d]
        rows = per_token.new_zeros(self.batch * self.longest, *per_token.shape[1:])
        rows.index_copy_(0, self.slots, per_token)
        return rows.view(self.batch, self.longest, *per_token.shape[1:]).transpose(1, 2)

    def from_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Attention output [batch, longest, heads, d] -> [1, T, heads, d] (the layout attention
        functions return, before the layer merges the heads)."""
        flat = rows.reshape(self.batch * self.longest, *rows.shape[2:])
        return flat.index_select(0, self.slots).unsqueeze(0)


def plan(attention_mask: torch.Tensor) -> Packing | None:
    """The packing of a [batch, seq] 0/1 mask, or None when it has no padding (nothing to gain, and
    the unpacked path is then exactly what it was), or when no row has a real token at all (nothing
    to pack: the padded path answers it as it always did)."""
    real = attention_mask.to(torch.bool)
    lengths = real.sum(dim=1)
    batch, seq = real.shape
    longest = int(lengths.max())
    if longest == 0 or (longest == seq and int(lengths.min()) == seq):
        return None
    tokens = real.reshape(-1).nonzero().squeeze(1)
    rank = real.cumsum(dim=1) - 1  # a real token's place within its own sequence
    rows = torch.arange(batch, device=real.device).unsqueeze(1) * longest
    slots = (rows + rank).reshape(-1).index_select(0, tokens)
    key_mask = (torch.arange(longest, device=real.device).unsqueeze(0) < lengths.unsqueeze(1)).view(batch, 1, 1, longest)
    return Packing(batch, seq, longest, tokens, slots, key_mask, tuple(lengths.tolist()))


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention-function signature; see the module docstring."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    packing: Packing | None = kwargs.pop(PACKING_KWARG, None)
    if packing is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    # is_causal=False: these are encoder blocks (bidirectional), and the masks are explicit or not needed
    if query.device.type in PER_SEQUENCE_DEVICES:
        outs, start = [], 0
        for n in packing.lengths:
            if n:  # each call is what the sequence alone computes: no mask, no padding
                piece = slice(start, start + n)
                outs.append(sdpa_attention_forward(module, query[:, :, piece], key[:, :, piece], value[:, :, piece],
                                                   None, dropout=dropout, scaling=scaling, is_causal=False,
                                                   **kwargs)[0])
                start += n
        return torch.cat(outs, dim=1), None
    out, _ = sdpa_attention_forward(module, packing.to_rows(query), packing.to_rows(key), packing.to_rows(value),
                                    packing.key_mask, dropout=dropout, scaling=scaling, is_causal=False, **kwargs)
    return packing.from_rows(out), None


def register() -> None:
    """Make PACKED_ATTENTION a valid `_attn_implementation` (once per process)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if PACKED_ATTENTION in ALL_ATTENTION_FUNCTIONS:
        return
    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    # masks are made from the model's own config (sdpa); this keeps one made from a block's config valid too
    ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_ATTENTION, sdpa_mask)


# Families whose blocks call transformers' attention interface and pass their kwargs through to it.
# MPNet is not one: its self-attention is its own eager code with a relative position bias added to
# the scores, so MPNet keeps the padded path.
PACKABLE_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "electra", "distilbert", "bart")


def supported(config) -> bool:
    """Whether blocks of this model can compute packed: a family that passes kwargs to the attention
    interface, and sdpa attention (an eager or flash choice is left as it is)."""
    return config.model_type in PACKABLE_MODEL_TYPES and config._attn_implementation == "sdpa"


# A padded engine's cost of one more call, in padded tokens: ONNX Runtime's MiniLM forward measured on
# 2 cores, 1-32 rows x 16-48 tokens, fits 0.14 ms per padded token plus 4.6 ms per call (~32 tokens).
RUN_COST_TOKENS = 32
MAX_GROUP_ROWS = 64  # bounds the search: a group of more rows gains nothing more per token


def length_groups(extents: list[int], run_cost_tokens: int = RUN_COST_TOKENS) -> list[list[int]]:
    """For an engine that can only compute padded (ONNX Runtime's graph, traced on one padded layout):
    the rows of a batch, by where their last real token sits (`extents`), split into groups of similar
    extent, each to be computed padded to its own longest. The groups minimise rows x longest summed
    over groups plus `run_cost_tokens` per group, over contiguous runs of the rows sorted by extent (the
    optimum is one: exchanging rows across groups never shortens both). Rows keep their order within
    a group."""
    order = sorted(range(len(extents)), key=extents.__getitem__)
    n = len(order)
    if n <= 1:
        return [order]
    sizes = [extents[i] for i in order]
    best = [0] + [None] * n  # best[i]: the cheapest grouping of the i shortest rows
    cut = [0] * (n + 1)
    for i in range(1, n + 1):
        for j in range(max(0, i - MAX_GROUP_ROWS), i):
            cost = best[j] + (i - j) * sizes[i - 1] + run_cost_tokens
            if best[i] is None or cost < best[i]:
                best[i], cut[i] = cost, j
    groups, i = [], n
    while i > 0:
        groups.append(sorted(order[cut[i]:i]))
        i = cut[i]
    return groups[::-1]


def row_extents(attention_mask: torch.Tensor) -> list[int]:
    """Per row of a [batch, seq] mask, one past its last real token (0 for a row with none): what a
    row's padded slice must keep, wherever its padding sits."""
    real = attention_mask.to(torch.bool)
    positions = torch.arange(1, real.shape[1] + 1, device=real.device)
    return (real * positions).amax(dim=1).tolist() if real.numel() else [0] * real.shape[0]
