"""A split computes exactly what the whole model computes, pruned or not, at every split point."""
import shutil

import pytest
import torch

from coinfer.errors import UsageError
from coinfer.models import resolve_model
from coinfer.lab.monolithic import WholeModel
from coinfer.split import DevicePart, GenerationOptions, ServerPart, block_tensors
from coinfer.pruning import Pruner

TOLERANCE = 1e-5


def run_split(src, k, ids, mask, generation=GenerationOptions(), rho=(1.0, 1.0), method="magnitude"):
    device, server = DevicePart(src, k), ServerPart(src, k)
    Pruner(device.linear_layers(), seed=src.seed, head_dim=src.head_dim).apply(rho[0], method)
    Pruner(server.linear_layers(), seed=src.seed, head_dim=src.head_dim).apply(rho[1], method)
    hidden = device(ids, mask)
    return hidden if device.runs_alone else server(hidden, mask, generation)


def tokens(src, sentences):
    batch = src.tokenizer(sentences, padding=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


@pytest.mark.parametrize("spec", ["minilm", "random:bert-tiny"])
def test_every_split_point_matches_whole_model(spec, sentences):
    src = resolve_model(spec)
    ids, mask = tokens(src, sentences)
    expected = WholeModel(src)(ids, mask)
    assert expected.shape == (len(sentences), src.hidden_size)
    for k in range(src.num_blocks + 1):
        got = run_split(src, k, ids, mask)
        assert (got - expected).abs().max().item() <= TOLERANCE, f"k={k}"


def test_minilm_matches_sentence_transformers(minilm, sentences):
    """Our pooling head is the model card's: mean pooling then L2 normalisation."""
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm.folder), device="cpu").encode(sentences, convert_to_tensor=True)
    got = run_split(minilm, 2, *tokens(minilm, sentences))
    assert (got - reference).abs().max().item() <= TOLERANCE


def test_bart_encoder_split_matches_whole_model(tiny_bart, sentences):
    from coinfer.split import EncoderSegment

    ids, mask = tokens(tiny_bart, sentences)
    whole = WholeModel(tiny_bart)
    with torch.no_grad():
        expected = whole.model.model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    for k in range(tiny_bart.num_blocks + 1):
        hidden = DevicePart(tiny_bart, k)(ids, mask)
        got = EncoderSegment(tiny_bart, k, tiny_bart.num_blocks, with_embedding=k == 0)(hidden, mask)
        real = mask.bool()  # padded positions are never computed (coinfer.packing) and nothing reads them
        assert (got[real] - expected[real]).abs().max().item() <= TOLERANCE, f"k={k}"


def test_bart_generate_gives_the_same_tokens_split_and_whole(tiny_bart, sentences):
    ids, mask = tokens(tiny_bart, sentences)
    # min_new_tokens keeps a random-weight model from stopping at EOS at once.
    generation = GenerationOptions(max_new_tokens=8, min_new_tokens=8)
    expected = WholeModel(tiny_bart)(ids, mask, generation)
    assert expected.shape[1] >= 8 and len(set(expected.flatten().tolist())) > 2
    for k in range(tiny_bart.num_blocks + 1):
        assert torch.equal(run_split(tiny_bart, k, ids, mask, generation), expected), f"k={k}"


@pytest.mark.parametrize("method", ["magnitude", "random", "structured"])
def test_pruned_split_equals_whole_model_pruned_the_same_way(minilm, sentences, method):
    ids, mask = tokens(minilm, sentences)
    whole = WholeModel(minilm)
    unpruned = whole(ids, mask)
    for k, rho in [(2, (0.6, 0.4)), (4, (0.3, 0.8))]:
        whole.prune(k, *rho, method)
        expected = whole(ids, mask)
        assert (expected - unpruned).abs().max().item() > 1e-2  # pruning really changed the output
        got = run_split(minilm, k, ids, mask, rho=rho, method=method)
        assert (got - expected).abs().max().item() <= TOLERANCE, f"k={k}"


@pytest.mark.parametrize("method", ["random", "structured"])
def test_pruned_bart_split_generates_like_whole_pruned(tiny_bart, sentences, method):
    ids, mask = tokens(tiny_bart, sentences)
    generation = GenerationOptions(max_new_tokens=6, min_new_tokens=6)
    whole = WholeModel(tiny_bart)
    whole.prune(2, 0.5, 0.7, method)
    expected = whole(ids, mask, generation)
    assert torch.equal(run_split(tiny_bart, 2, ids, mask, generation, rho=(0.5, 0.7), method=method), expected)


def test_each_half_holds_only_its_blocks(minilm):
    device, server = DevicePart(minilm, 2), ServerPart(minilm, 2)
    assert len(device.segment.blocks) == 2 and len(server.segment.blocks) == minilm.num_blocks - 2
    assert server.segment.embedding is None  # no token embedding on the server at k > 0
    whole = sum(p.numel() for p in WholeModel(minilm).model.parameters())
    device_n = sum(p.numel() for p in device.parameters())
    server_n = sum(p.numel() for p in server.parameters())
    assert device_n + server_n == whole


def test_split_point_out_of_range_is_a_clear_error(minilm):
    with pytest.raises(UsageError, match="0..6"):
        DevicePart(minilm, 7)
    with pytest.raises(UsageError, match="split point"):
        ServerPart(minilm, -1)


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="never downloads"):
        resolve_model("bert-base-uncased")
    with pytest.raises(UsageError, match="random:"):
        resolve_model("random:gpt-huge")
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(UsageError, match="safetensors"):
        DevicePart(resolve_model(str(tmp_path)), 1)


def test_random_models_are_identical_across_independent_builds():
    a, b = resolve_model("random:bert-tiny"), resolve_model("random:bert-tiny")
    wa, wb = block_tensors(a, 1), block_tensors(b, 1)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[n], wb[n]) for n in wa)
    other_seed = block_tensors(resolve_model("random:bert-tiny", seed=1), 1)
    assert not all(torch.equal(wa[n], other_seed[n]) for n in wa)


def test_device_half_resident_memory_is_well_below_the_whole_model():
    """scripts/device_memory builds each in a fresh process and reports RSS above the import floor."""
    import json
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[3] / "scripts" / "device_memory"
    out = subprocess.run([str(script), "--model", "random:bert-base", "--split", "2"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["device"]["parameters"] < 0.4 * report["whole"]["parameters"]
    assert report["device_over_whole_model_mb"] < 0.5
