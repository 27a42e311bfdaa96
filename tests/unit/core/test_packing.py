"""Packed batches: sequences of different lengths computed together on their real tokens only, each
answer equal (<= 1e-5) to the sequence computed alone, for every family that packs; MPNet keeps the
padded path; a batch without padding takes today's path."""
import random

import pytest
import torch

from coinfer import packing
from coinfer.lab.monolithic import WholeModel
from coinfer.models import ModelSource, resolve_model
from coinfer.split import DevicePart, EncoderSegment, ServerPart

TOLERANCE = 1e-5
VOCAB = 30522


def _configs():
    from transformers import BertConfig, DistilBertConfig, ElectraConfig, MPNetConfig, RobertaConfig

    common = dict(vocab_size=VOCAB, max_position_embeddings=514)
    return {
        "bert": BertConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96, **common),
        "roberta": RobertaConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
                                 pad_token_id=1, type_vocab_size=1, **common),
        "electra": ElectraConfig(embedding_size=32, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                 intermediate_size=96, **common),
        "distilbert": DistilBertConfig(dim=64, n_layers=3, n_heads=4, hidden_dim=96, **common),
        "mpnet": MPNetConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
                             **common),
    }


def random_batch(lengths, seed=0, low=1000):
    """Token ids right-padded to the longest length, and their mask."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(low, VOCAB, (len(lengths), max(lengths)), generator=generator)
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0
    return ids, mask


def random_lengths(count, longest, seed):
    rng = random.Random(seed)
    return [1, longest] + [rng.randint(1, longest) for _ in range(count - 2)]


def assert_each_equals_alone(segment, ids, mask):
    packed = segment(ids, mask)
    for i in range(ids.shape[0]):
        real = mask[i].bool()
        alone = segment(ids[i:i + 1, real], mask[i:i + 1, real])
        diff = (packed[i, real] - alone[0]).abs().max().item()
        assert diff <= TOLERANCE, f"sequence {i} ({int(real.sum())} tokens): {diff:.2e}"
    return packed


class PackingSpy:
    """Counts the attention calls that really computed packed (a Packing in their kwargs)."""

    def __init__(self, monkeypatch):
        from transformers import AttentionInterface

        self.calls = 0
        original = packing.packed_attention

        def counting(*args, **kwargs):
            if kwargs.get(packing.PACKING_KWARG) is not None:
                self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setitem(AttentionInterface._global_mapping, packing.PACKED_ATTENTION, counting)


PACKING_FAMILIES = ["bert", "roberta", "electra", "distilbert"]


@pytest.fixture(params=["per-sequence", "rows"])
def either_layout(request, monkeypatch):
    if request.param == "rows":
        monkeypatch.setattr(packing, "PER_SEQUENCE_DEVICES", ())
    return request.param


@pytest.mark.parametrize("layout", ["per-sequence", "rows"])
@pytest.mark.parametrize("family", PACKING_FAMILIES)
def test_every_packing_family_equals_each_sequence_alone(family, layout, monkeypatch):
    if layout == "rows":  # what CUDA runs: one SDPA call over per-sequence rows with a key mask
        monkeypatch.setattr(packing, "PER_SEQUENCE_DEVICES", ())
    src = ModelSource(f"random:{family}", _configs()[family], None, seed=1)
    segment = EncoderSegment(src, 0, src.num_blocks, with_embedding=True)
    assert segment.packs
    spy = PackingSpy(monkeypatch)
    ids, mask = random_batch(random_lengths(6, 512, seed=PACKING_FAMILIES.index(family)), seed=2, low=5)
    assert_each_equals_alone(segment, ids, mask)
    assert spy.calls == src.num_blocks  # the batch's attention was packed in every block


def test_random_bert_lengths_1_to_512_and_pooled_embeddings(tiny_bert, monkeypatch):
    spy = PackingSpy(monkeypatch)
    part = ServerPart(tiny_bert, 0)
    for seed in range(2):
        lengths = random_lengths(8, 512, seed)
        ids, mask = random_batch(lengths, seed)
        assert_each_equals_alone(part.segment, ids, mask)
        pooled = part(ids, mask)
        for i, n in enumerate(lengths):
            alone = part(ids[i:i + 1, :n], mask[i:i + 1, :n])
            assert (pooled[i] - alone[0]).abs().max().item() <= TOLERANCE
    assert spy.calls > 0


def test_minilm_packed_equals_alone_and_the_whole_model(minilm):
    lengths = random_lengths(5, 512, seed=7)
    ids, mask = random_batch(lengths, seed=7)
    device, server = DevicePart(minilm, 3), ServerPart(minilm, 3)
    assert device.segment.packs and server.segment.packs
    hidden = device(ids, mask)
    pooled = server(hidden, mask)
    whole = WholeModel(minilm)(ids, mask)  # transformers' own model, run padded
    assert (pooled - whole).abs().max().item() <= TOLERANCE
    for i, n in enumerate(lengths):
        alone_hidden = device(ids[i:i + 1, :n], mask[i:i + 1, :n])
        assert (hidden[i, :n] - alone_hidden[0]).abs().max().item() <= TOLERANCE
        alone = server(alone_hidden, mask[i:i + 1, :n])
        assert (pooled[i] - alone[0]).abs().max().item() <= TOLERANCE


def test_bart_encoder_packs(tiny_bart, monkeypatch):
    spy = PackingSpy(monkeypatch)
    segment = EncoderSegment(tiny_bart, 0, tiny_bart.num_blocks, with_embedding=True)
    assert segment.packs
    ids, mask = random_batch(random_lengths(6, tiny_bart.config.max_position_embeddings, seed=3), seed=3)
    assert_each_equals_alone(segment, ids, mask)
    assert spy.calls > 0


def test_mpnet_keeps_the_padded_path(monkeypatch):
    src = ModelSource("random:mpnet", _configs()["mpnet"], None, seed=1)
    segment = EncoderSegment(src, 0, src.num_blocks, with_embedding=True)
    assert not segment.packs
    spy = PackingSpy(monkeypatch)
    ids, mask = random_batch([3, 40, 17], seed=4, low=5)
    assert_each_equals_alone(segment, ids, mask)
    assert spy.calls == 0


def test_left_padding_and_holes_pack_too(tiny_bert, either_layout):
    segment = EncoderSegment(tiny_bert, 0, tiny_bert.num_blocks, with_embedding=True)
    ids, _ = random_batch([30, 30, 30], seed=5)
    mask = torch.ones_like(ids)
    mask[0, :12] = 0          # left padding
    mask[1, 5:9] = 0          # a hole
    mask[2, 25:] = 0          # right padding
    packed = segment(ids, mask)
    for i in range(3):
        real = mask[i].bool()
        # alone: the same positions (the embedding adds them before packing), the rest masked, padded path
        segment.packs = False
        try:
            alone = segment(ids[i:i + 1], mask[i:i + 1])
        finally:
            segment.packs = True
        assert (packed[i, real] - alone[0, real]).abs().max().item() <= TOLERANCE
        assert packed[i, ~real].abs().max().item() == 0  # padding is never computed


def test_a_row_without_tokens_does_not_disturb_the_others(tiny_bert, either_layout):
    segment = EncoderSegment(tiny_bert, 0, tiny_bert.num_blocks, with_embedding=True)
    ids, mask = random_batch([10, 10, 6], seed=8)
    mask[1] = 0
    out = segment(ids, mask)
    assert torch.isfinite(out).all() and out[1].abs().max().item() == 0
    alone = segment(ids[2:3, :6], mask[2:3, :6])
    assert (out[2, :6] - alone[0]).abs().max().item() <= TOLERANCE


def test_no_padding_takes_todays_path(tiny_bert, monkeypatch):
    assert packing.plan(torch.ones(3, 7, dtype=torch.long)) is None
    assert packing.plan(torch.ones(1, 1, dtype=torch.long)) is None
    spy = PackingSpy(monkeypatch)
    segment = EncoderSegment(tiny_bert, 0, tiny_bert.num_blocks, with_embedding=True)
    ids, mask = random_batch([9, 9, 9], seed=6)
    out = segment(ids, mask)
    assert spy.calls == 0
    # the packed attention function without a packing is transformers' sdpa: the same numbers
    segment_sdpa = EncoderSegment(tiny_bert, 0, tiny_bert.num_blocks, with_embedding=True)
    segment_sdpa.packs = False
    for block in segment_sdpa.blocks:
        for module in block.modules():
            if getattr(module, "config", None) is not None:
                module.config = tiny_bert.config
    assert torch.equal(out, segment_sdpa(ids, mask))


def test_packing_layout():
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [1, 0, 0, 0]])
    plan = packing.plan(mask)
    assert plan.total == 6 and plan.longest == 3
    assert plan.tokens.tolist() == [0, 1, 5, 6, 7, 8]
    assert plan.slots.tolist() == [0, 1, 3, 4, 5, 6]
    assert plan.key_mask.view(3, 3).tolist() == [[True, True, False], [True, True, True], [True, False, False]]
    hidden = torch.arange(3 * 4 * 2, dtype=torch.float32).view(3, 4, 2)
    packed = plan.pack(hidden)
    assert packed.shape == (1, 6, 2)
    back = plan.unpack(packed)
    assert torch.equal(back[mask.bool()], hidden[mask.bool()]) and back[~mask.bool()].abs().sum() == 0


def test_length_groups_cover_every_row_once_and_cut_padding():
    from hypothesis import given, settings, strategies as st

    from coinfer.packing import RUN_COST_TOKENS, length_groups

    def padded(groups, extents):
        return sum(len(g) * max(extents[i] for i in g) + RUN_COST_TOKENS for g in groups)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(0, 512), min_size=1, max_size=130))
    def check(extents):
        groups = length_groups(extents)
        assert sorted(i for g in groups for i in g) == list(range(len(extents)))  # each row exactly once
        assert all(g == sorted(g) for g in groups)  # rows keep their order within a group
        assert padded(groups, extents) <= padded([list(range(len(extents)))], extents)  # never worse than one run

    check()
    assert length_groups([20] * 10) == [list(range(10))]  # one length: one group
    assert length_groups([5, 300, 6, 290]) == [[0, 2], [1, 3]]  # far apart: two
    assert length_groups([]) == [[]]


def test_row_extents_keep_every_real_token():
    from coinfer.packing import row_extents

    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    assert row_extents(mask) == [2, 3, 0, 4]
