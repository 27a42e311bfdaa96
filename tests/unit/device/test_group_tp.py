"""Tensor-parallel shards of the device half, all shards in one process (no torch.distributed).

The all-reduce is replaced by the plain sum of the shards' partials, so these check the sharding
math itself; tests/test_group_procs.py runs the same shards as real gloo ranks.
"""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from coinfer.device.group.tp import ShardedBlock, ShardedDevicePart, key_padding_mask, read_slices, shards
from coinfer.errors import UsageError
from coinfer.device.group.design import BlockShape
from coinfer.split import DevicePart, build_block


def run_shards(parts: list[ShardedDevicePart], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The group's forward with every rank in this process: sum of partials in rank order."""
    with torch.inference_mode():
        hidden = parts[0].embedding(ids)
        attn_mask = key_padding_mask(mask)
        for b in range(parts[0].k):
            blocks = [p.blocks[b] for p in parts]
            x1 = blocks[0].attention_finish(sum(bl.attention_partial(hidden, attn_mask) for bl in blocks), hidden)
            hidden = blocks[0].ffn_finish(sum(bl.ffn_partial(x1) for bl in blocks), x1)
    return hidden


def tokens(src, sentences):
    batch = src.tokenizer(sentences, padding=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def test_shards_are_contiguous_and_cover_everything():
    out = shards([5, 0, 4, 3], [100, 700, 0, 736])
    assert [s.heads for s in out] == [range(0, 5), range(5, 5), range(5, 9), range(9, 12)]
    assert [s.columns for s in out] == [range(0, 100), range(100, 800), range(800, 800), range(800, 1536)]
    with pytest.raises(UsageError):
        shards([1, -1], [2, 2])
    with pytest.raises(UsageError):
        shards([1, 1], [2])


@pytest.mark.parametrize("heads, columns", [([6, 6], [768, 768]), ([3, 3, 3, 3], [384] * 4),
                                            ([5, 0, 4, 3], [100, 700, 0, 736])])
def test_minilm_shards_sum_to_the_single_device_half(minilm, sentences, heads, columns):
    k = 2
    parts = [ShardedDevicePart(minilm, k, s) for s in shards(heads, columns)]
    reference = DevicePart(minilm, k)
    # One sentence: no padding, the whole output is compared.
    ids, mask = tokens(minilm, sentences[:1])
    assert (run_shards(parts, ids, mask) - reference(ids, mask)).abs().max().item() <= 1e-5
    # A padded batch: real tokens within 1e-5 (padded positions: see test_group_procs).
    ids, mask = tokens(minilm, sentences)
    diff = (run_shards(parts, ids, mask) - reference(ids, mask)).abs()
    assert not mask.all() and diff[mask.bool()].max().item() <= 1e-5


def test_bart_encoder_shards_sum_to_the_single_device_half(tiny_bart, sentences):
    parts = [ShardedDevicePart(tiny_bart, 3, s) for s in shards([1, 0, 3], [50, 78, 0])]
    ids, mask = tokens(tiny_bart, sentences)
    diff = (run_shards(parts, ids, mask) - DevicePart(tiny_bart, 3)(ids, mask)).abs()
    # real tokens only: the single device packs its batch, so its padded positions are zeros
    assert diff[mask.bool()].max().item() <= 1e-5


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_any_assignment_sums_to_the_single_device_half(tiny_bert, data):
    n = data.draw(st.integers(1, 5), label="devices")
    cuts_h = sorted(data.draw(st.lists(st.integers(0, 4), min_size=n - 1, max_size=n - 1), label="head cuts"))
    cuts_c = sorted(data.draw(st.lists(st.integers(0, 128), min_size=n - 1, max_size=n - 1), label="column cuts"))
    heads = [b - a for a, b in zip([0, *cuts_h], [*cuts_h, 4])]
    columns = [b - a for a, b in zip([0, *cuts_c], [*cuts_c, 128])]
    parts = [ShardedDevicePart(tiny_bert, 2, s) for s in shards(heads, columns)]
    ids = torch.randint(1000, 2000, (2, 7), generator=torch.Generator().manual_seed(n))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    diff = (run_shards(parts, ids, mask) - DevicePart(tiny_bert, 2)(ids, mask)).abs()
    assert diff[mask.bool()].max().item() <= 1e-5  # real tokens (padded ones: see above)


def test_a_rank_holds_only_its_share_of_each_block(minilm):
    """Sharded parameters over all ranks = one block + (N - 1) copies of the replicated vectors."""
    full = sum(p.numel() for p in build_block(minilm, 0).parameters())
    hidden = minilm.hidden_size
    replicated = 6 * hidden  # two output biases, two LayerNorms (weight + bias)
    ranks = [ShardedBlock(minilm, 0, s) for s in shards([2, 10], [300, 1236])]
    counts = [sum(p.numel() for p in r.parameters()) for r in ranks]
    assert sum(counts) == full + replicated
    # The one with 2 of 12 heads and 300 of 1536 columns holds about a fifth of the block.
    assert counts[0] < 0.25 * full


def test_slices_read_from_the_checkpoint_equal_the_full_tensor(minilm):
    name = "encoder.layer.1.attention.self.query.weight"
    full = minilm.read({name: torch.empty(384, 384)})[name]
    got = read_slices(minilm, {name: ((384, 384), 0, range(64, 128))})[name]
    assert torch.equal(got, full[64:128])
    name = "encoder.layer.1.output.dense.weight"
    full = minilm.read({name: torch.empty(384, 1536)})[name]
    got = read_slices(minilm, {name: ((384, 1536), 1, range(10, 20))})[name]
    assert torch.equal(got, full[:, 10:20])
    with pytest.raises(UsageError, match="shape"):
        read_slices(minilm, {name: ((384, 1000), 1, range(0, 2))})


def test_block_shape_matches_the_models(minilm, tiny_bart):
    assert BlockShape.of(minilm) == BlockShape(384, 12, 1536)
    assert BlockShape.of(tiny_bart) == BlockShape(64, 4, 128)


def test_a_device_half_without_blocks_is_refused(tiny_bert):
    with pytest.raises(UsageError, match="k >= 1"):
        ShardedDevicePart(tiny_bert, 0, shards([4], [128])[0])
