"""Pruning: the ratio is what was asked, masks are per layer, and rho is a live knob."""
import shutil

import pytest
import torch
from torch import nn

from coinfer.models import resolve_model
from coinfer.lab.monolithic import WholeModel
from coinfer.pruning import Pruner, layer_mask
from coinfer.split import DevicePart, ServerPart


def test_magnitude_mask_keeps_the_largest_weights():
    weight = torch.tensor([[0.1, -3.0, 0.2], [2.0, -0.05, 1.0]])
    mask = layer_mask(weight, 0.5, "magnitude", "w")
    assert mask.sum().item() == 3
    assert mask.tolist() == [[False, True, False], [True, False, True]]


def test_random_mask_depends_on_name_and_seed_only():
    weight = torch.randn(64, 64)
    a = layer_mask(weight, 0.3, "random", "layer.0")
    assert a.sum().item() == round(0.3 * 64 * 64)
    assert torch.equal(a, layer_mask(torch.randn(64, 64), 0.3, "random", "layer.0"))
    assert not torch.equal(a, layer_mask(weight, 0.3, "random", "layer.1"))
    assert not torch.equal(a, layer_mask(weight, 0.3, "random", "layer.0", seed=7))


@pytest.mark.parametrize("rho", [0.0, -0.1, 1.5, float("nan")])
def test_bad_ratio_is_refused(rho):
    with pytest.raises(ValueError, match="rho"):
        Pruner({"l": nn.Linear(4, 4)}).apply(rho)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="magnitude, random"):
        Pruner({"l": nn.Linear(4, 4)}).apply(0.5, "lottery")


def test_achieved_ratio_is_per_layer_and_exact():
    layers = {"a": nn.Linear(100, 50), "b": nn.Linear(30, 10)}
    state = Pruner(layers).apply(0.25)
    assert (layers["a"].weight != 0).sum().item() == 1250 and (layers["b"].weight != 0).sum().item() == 75
    assert state.kept == 1325 and abs(state.achieved_ratio - 0.25) < 1e-9


def test_changing_rho_at_run_time_needs_no_reload(tmp_path, sentences):
    """Build the halves from a copy of the checkpoint, delete the copy, then move rho up and down."""
    folder = tmp_path / "model"
    shutil.copytree(resolve_model("minilm").folder, folder)
    src = resolve_model(str(folder))
    device, server = DevicePart(src, 3), ServerPart(src, 3)
    pruners = Pruner(device.linear_layers()), Pruner(server.linear_layers())
    src.tokenizer  # noqa: B018 - the device keeps its tokenizer loaded; weights are what must not reload
    shutil.rmtree(folder)  # any reload from now on would fail

    reference = WholeModel(resolve_model("minilm"))
    batch = src.tokenizer(sentences, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    query = device.linear_layers()["encoder.layer.0.attention.self.query"].weight
    outputs = {}
    for rho in (0.5, 0.2, 1.0, 0.5):
        for pruner in pruners:
            pruner.apply(rho)
        assert abs((query != 0).float().mean().item() - rho) < 1e-3
        out = server(device(ids, mask), mask)
        reference.prune(3, rho, rho)
        assert (out - reference(ids, mask)).abs().max().item() <= 1e-5
        if rho in outputs:  # returning to a ratio gives the same weights back
            assert torch.equal(out, outputs[rho])
        outputs[rho] = out
    assert (outputs[0.2] - outputs[1.0]).abs().max().item() > 1e-2


def test_structured_pruning_shrinks_heads_and_neurons(minilm):
    device = DevicePart(minilm, 2)
    layers = device.linear_layers()
    pruner = Pruner(layers, head_dim=minilm.head_dim)
    state = pruner.apply(0.5, "structured")
    query = layers["encoder.layer.0.attention.self.query"]
    assert query.weight.shape == (6 * 32, 384) and query.bias.shape == (6 * 32,)  # 6 of 12 heads
    assert layers["encoder.layer.0.attention.output.dense"].weight.shape == (384, 6 * 32)
    assert layers["encoder.layer.1.intermediate.dense"].weight.shape == (768, 384)  # 768 of 1536 neurons
    assert layers["encoder.layer.1.output.dense"].weight.shape == (384, 768)
    assert abs(state.achieved_ratio - 0.5) < 0.01


def test_structured_keeps_the_heaviest_heads():
    from coinfer.pruning import StructuredGroup, structured_keep

    dense = {"q": (torch.ones(8, 4), None), "o": (torch.ones(4, 8), None)}
    dense["q"][0][4:6] *= 10  # head 2 (rows 4-5) is the heaviest
    dense["o"][0][:, 0:2] *= 5  # head 0 next
    assert structured_keep(dense, StructuredGroup(("q",), "o", 2), 0.5).tolist() == [0, 2]


def test_structured_at_rho_one_is_dense_and_back_again(minilm, sentences):
    device, server = DevicePart(minilm, 3), ServerPart(minilm, 3)
    batch = minilm.tokenizer(sentences, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    dense_out = server(device(ids, mask), mask)
    pruners = [Pruner(part.linear_layers(), head_dim=minilm.head_dim) for part in (device, server)]
    for pruner in pruners:
        pruner.apply(0.4, "structured")
    pruned_out = server(device(ids, mask), mask)
    assert (pruned_out - dense_out).abs().max().item() > 1e-2
    for pruner in pruners:
        pruner.apply(1.0, "structured")
    assert torch.equal(server(device(ids, mask), mask), dense_out)
    for pruner in pruners:  # structured -> unstructured restores the full shapes first
        pruner.apply(0.5, "magnitude")
    assert device.linear_layers()["encoder.layer.0.attention.self.query"].weight.shape == (384, 384)
