"""The measured output-quality model (coinfer.planner.quality): fitting, prediction, storage, measurement."""
from __future__ import annotations

import itertools
import json
import math

import pytest

from coinfer.errors import UsageError
from coinfer.planner import quality
from coinfer.planner.calibration import CALIBRATION_SENTENCES
from coinfer.planner.quality import QualityModel, choose_min_ratio, load_or_measure, measure_quality
from coinfer.samples import SENTENCES

FEW = list(CALIBRATION_SENTENCES[:6])
RATIOS = (0.1, 0.4, 0.7, 1.0)


@pytest.fixture(scope="module")
def tiny_model(tiny_bert):
    return measure_quality(tiny_bert, sentences=FEW, methods=("structured", "magnitude"), ratios=RATIOS,
                           speed_repeats=1)


def _all_pieces(model):
    for m in model.methods:
        for k in range(model.num_blocks + 1):
            for side in quality.SIDES:
                pieces = model.pieces(m, k, side)
                if pieces is not None:
                    yield m, k, side, pieces


def test_calibration_set_is_disjoint_from_held_out_sentences():
    assert len(CALIBRATION_SENTENCES) >= 40
    assert len(set(CALIBRATION_SENTENCES)) == len(CALIBRATION_SENTENCES)
    assert not set(CALIBRATION_SENTENCES) & set(SENTENCES)


def test_sides_present_where_each_half_prunes_something(tiny_model):
    L = tiny_model.num_blocks
    assert tiny_model.pieces("structured", 0, "device") is None
    assert tiny_model.pieces("structured", L, "server") is None       # an encoder's server has nothing at k = L
    assert tiny_model.pieces("structured", 0, "server") is not None
    assert tiny_model.pieces("structured", L, "device") is not None
    assert set(tiny_model.curves["magnitude"]["device"]) == set(range(1, L + 1))
    assert set(tiny_model.curves["magnitude"]["server"]) == set(range(0, L))
    # all blocks pruned is the same whichever half holds them
    assert tiny_model.curves["structured"]["server"][0] == tiny_model.curves["structured"]["device"][L]


def test_fitted_pieces_are_convex_non_increasing_and_zero_at_one(tiny_model):
    grid = [i / 100 for i in range(5, 101)]
    for m, k, side, pieces in _all_pieces(tiny_model):
        assert all(b <= 0 for b in pieces.beta), (m, k, side)
        assert abs(pieces(1.0)) < 1e-12
        values = [pieces(r) for r in grid]
        assert all(a >= b - 1e-12 for a, b in zip(values, values[1:]))             # non-increasing
        assert all(values[i - 1] + values[i + 1] >= 2 * values[i] - 1e-12 for i in range(1, len(values) - 1))
        # and it follows the measured curve inside the usable range
        curve = tiny_model.curves[m][side][k]
        for r, q in zip(tiny_model.ratios, curve):
            if r >= tiny_model.min_ratio[m]:
                assert abs(quality._quality(pieces(r), tiny_model.loss_space) - q) <= quality.FIT_TOLERANCE


def test_fit_is_convex_hull_of_a_non_convex_curve():
    ratios = (0.2, 0.4, 0.6, 0.8, 1.0)
    measured = (0.30, 0.32, 0.70, 0.95, 1.0)   # saturates below 0.6: concave loss there
    pieces = quality._fit(ratios, measured, "one_minus", 0.2)
    assert all(b <= 0 for b in pieces.beta)
    assert 1 - pieces(0.4) > 0.32 + 0.05        # the hull under-predicts the loss where it saturates...
    assert choose_min_ratio(ratios, [measured], "one_minus") == 0.6   # ...so the usable range starts above
    assert choose_min_ratio(ratios, [(0.2, 0.3, 0.4, 0.45, 1.0)], "one_minus") == 1.0   # below 0.5: none usable
    # with no usable range the pieces still lose quality below 1 (the last chord), never predict 1
    assert quality._fit(ratios, (0.2, 0.3, 0.4, 0.45, 1.0), "one_minus", 1.0)(0.8) == pytest.approx(0.55)


def test_predict_is_one_unpruned_and_monotone(tiny_model):
    grid = (0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 1.0)
    for m in tiny_model.methods:
        for k in range(tiny_model.num_blocks + 1):
            assert tiny_model.predict(m, k, 1.0, 1.0) == 1.0
            for rho in grid:
                row = [tiny_model.predict(m, k, rho, r) for r in grid]
                col = [tiny_model.predict(m, k, r, rho) for r in grid]
                assert all(0.0 <= q <= 1.0 for q in row + col)
                assert all(a <= b + 1e-15 for a, b in zip(row, row[1:]))
                assert all(a <= b + 1e-15 for a, b in zip(col, col[1:]))
    # something is lost when both halves are pruned hard
    assert tiny_model.predict("structured", 2, 0.1, 0.1) < 1.0
    with pytest.raises(UsageError):
        tiny_model.predict("structured", tiny_model.num_blocks + 1, 1.0, 1.0)
    with pytest.raises(UsageError, match="random"):
        tiny_model.pieces("random", 1, "device")


@pytest.mark.parametrize("space", quality.LOSS_SPACES)
def test_loss_limit_agrees_with_predict(tiny_model, space):
    model = tiny_model.with_loss_space(space)
    assert model.loss_limit(1.0) == 0.0
    assert model.loss_limit(0.0) == math.inf
    floors = (0.9, 0.99, 0.995, 0.999, 0.9995)
    for m, k, rd, rs in itertools.product(model.methods, range(model.num_blocks + 1), RATIOS, (0.1, 0.5, 0.9, 1.0)):
        loss, q = model.loss(m, k, rd, rs), model.predict(m, k, rd, rs)
        for floor in floors:
            if abs(loss - model.loss_limit(floor)) > 1e-12:
                assert (q >= floor) == (loss <= model.loss_limit(floor)), (m, k, rd, rs, floor)


def test_loss_spaces_compose_differently():
    ratios = (0.5, 1.0)
    curves = {"magnitude": {"device": {1: (0.8, 1.0)}, "server": {0: (0.8, 1.0)}}}
    base = dict(model_name="x", fingerprint="f", metric="cosine", num_blocks=1, methods=("magnitude",),
                ratios=ratios, speed={"magnitude": 0.0}, min_ratio={"magnitude": 0.5}, curves=curves)
    additive = QualityModel(loss_space="one_minus", **base)
    product = QualityModel(loss_space="neg_log", **base)
    assert additive.predict("magnitude", 1, 0.5, 1.0) == pytest.approx(0.8)
    assert product.predict("magnitude", 1, 0.5, 1.0) == pytest.approx(0.8)
    assert additive.predict("magnitude", 0, 1.0, 0.5) == pytest.approx(0.8)


def test_round_trip_and_validation(tiny_model):
    d = json.loads(json.dumps(tiny_model.to_dict()))
    back = QualityModel.from_dict(d)
    assert back == tiny_model
    assert back.to_dict() == tiny_model.to_dict()
    assert back.pieces("structured", 2, "server") == tiny_model.pieces("structured", 2, "server")
    for corrupt in (
        lambda d: d.pop("curves"),
        lambda d: d["curves"]["structured"]["device"].pop("1"),
        lambda d: d["curves"]["structured"]["device"]["1"].__setitem__(0, 1.5),
        lambda d: d["curves"]["magnitude"]["server"]["0"].pop(),
        lambda d: d.__setitem__("ratios", [0.5, 0.1, 0.7, 1.0]),
        lambda d: d.__setitem__("loss_space", "linear"),
        lambda d: d.__setitem__("schema", 999),
        lambda d: d["speed"].pop("magnitude"),
        lambda d: d.__setitem__("num_blocks", "many"),
    ):
        broken = json.loads(json.dumps(tiny_model.to_dict()))
        corrupt(broken)
        with pytest.raises(ValueError):
            QualityModel.from_dict(broken)
    with pytest.raises(ValueError):
        QualityModel.from_dict([1, 2, 3])


def test_cache_is_used_and_a_corrupted_one_is_measured_again(tiny_bert, tiny_model, tmp_path, monkeypatch):
    calls = []

    def fake_measure(src, **kw):
        calls.append(kw)
        return tiny_model

    monkeypatch.setattr(quality, "measure_quality", fake_measure)
    kw = dict(sentences=FEW, methods=("structured", "magnitude"), ratios=RATIOS)
    first = load_or_measure(tiny_bert, cache_dir=tmp_path, **kw)
    assert first == tiny_model and len(calls) == 1
    path = quality.cache_path(tiny_bert, tmp_path, **kw)
    assert path.exists() and tiny_bert.fingerprint in path.name
    assert load_or_measure(tiny_bert, cache_dir=tmp_path, **kw) == tiny_model and len(calls) == 1   # from the cache
    load_or_measure(tiny_bert, cache_dir=tmp_path, refresh=True, **kw)
    assert len(calls) == 2
    path.write_text('{"schema": 1, "model_name": "x", "curves": {')   # truncated file
    with pytest.warns(RuntimeWarning, match="measuring again"):
        again = load_or_measure(tiny_bert, cache_dir=tmp_path, **kw)
    assert again == tiny_model and len(calls) == 3
    assert QualityModel.from_dict(json.loads(path.read_text())) == tiny_model     # rewritten whole
    # another model's file under this model's name is not believed either
    other = json.loads(path.read_text())
    other["fingerprint"] = "0" * 16
    path.write_text(json.dumps(other))
    with pytest.warns(RuntimeWarning, match="fingerprint"):
        load_or_measure(tiny_bert, cache_dir=tmp_path, **kw)
    assert len(calls) == 4
    # other settings are another file
    assert quality.cache_path(tiny_bert, tmp_path, **{**kw, "ratios": (0.5, 1.0)}) != path


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("COINFER_CACHE_DIR", str(tmp_path))
    assert quality.default_cache_dir() == tmp_path
    monkeypatch.delenv("COINFER_CACHE_DIR")
    assert quality.default_cache_dir().parts[-3:] == (".cache", "coinfer", "quality")


def test_bad_arguments_are_usage_errors(tiny_bert):
    with pytest.raises(UsageError, match="prune method"):
        measure_quality(tiny_bert, sentences=FEW, methods=("pointy",))
    with pytest.raises(UsageError, match="ratios"):
        measure_quality(tiny_bert, sentences=FEW, ratios=(0.0, 1.0))
    with pytest.raises(UsageError, match="ratios"):
        measure_quality(tiny_bert, sentences=FEW, ratios=(1.0,))
    with pytest.raises(UsageError, match="sentences"):
        measure_quality(tiny_bert, sentences=["", " "])


def test_bart_token_agreement(tiny_bart):
    model = measure_quality(tiny_bart, sentences=FEW[:4], methods=("structured",), ratios=(0.1, 1.0),
                            speed_repeats=1)
    L = model.num_blocks
    assert model.metric == "token_agreement"
    assert model.pieces("structured", L, "server") is not None     # BART's server prunes its decoder even at k = L
    assert model.pieces("structured", 0, "device") is None
    assert model.curves["structured"]["server"][L][-1] == 1.0
    # (random weights leave the residual stream, hence the argmax token, almost unchanged by pruning;
    # the decoder is pruned with the server's half all the same:)
    stack = quality._Stack(tiny_bart, cache_size=2)
    fc1 = stack.pruned_gen.model.decoder.layers[0].fc1
    width = fc1.out_features
    stack.apply(0.5, "structured")
    assert fc1.out_features == width // 2 and stack.dense_gen.model.decoder.layers[0].fc1.out_features == width
    assert all(0.0 <= q <= 1.0 for by_k in model.curves["structured"].values() for c in by_k.values() for q in c)
    assert QualityModel.from_dict(json.loads(json.dumps(model.to_dict()))) == model


@pytest.mark.slow
def test_minilm_quality_bites_and_matches_the_real_halves(minilm):
    """Structured pruning at rho 0.3 changes MiniLM's embedding a lot, and the curves are what a
    DevicePart / ServerPart pruned with Pruner.for_part produce."""
    import torch

    from coinfer.pruning import Pruner
    from coinfer.split import DevicePart, ServerPart

    sentences = list(CALIBRATION_SENTENCES[:8])
    model = measure_quality(minilm, sentences=sentences, ratios=(0.3, 0.7, 1.0), speed_repeats=1)
    L = model.num_blocks
    for m in ("structured", "magnitude"):
        assert model.curves[m]["device"][L][0] < 0.8            # the whole model pruned to 0.3
        assert model.curves[m]["device"][1][0] > model.curves[m]["device"][L][0]   # fewer blocks pruned, less lost
        assert model.p10[m]["device"][L][0] <= model.curves[m]["device"][L][0]
    assert model.predict("structured", 3, 0.3, 0.3) < model.predict("structured", 3, 0.3, 1.0) < 1.0

    ids, mask = minilm.tokenize(sentences, max_length=model.max_tokens)
    k = 3
    reference = ServerPart(minilm, k)(DevicePart(minilm, k)(ids, mask), mask)
    for side in ("device", "server"):
        device, server = DevicePart(minilm, k), ServerPart(minilm, k)
        Pruner.for_part(device if side == "device" else server, minilm, 0.3, "structured")
        got = server(device(ids, mask), mask)
        measured = float(torch.nn.functional.cosine_similarity(got, reference, dim=-1).mean())
        assert measured == pytest.approx(model.curves["structured"][side][k][0], abs=2e-4)


@pytest.mark.slow
def test_structured_pruning_is_faster_than_magnitude():
    """sigma on one BERT-base block: structured shrinks the matrices, magnitude only zeroes them."""
    import torch

    from coinfer.models import resolve_model
    from coinfer.pruning import Pruner
    from coinfer.split import build_block, make_attention_mask

    src = resolve_model("random:bert-base")
    block = build_block(src, 0)
    prefix = src.block_prefix(0)
    layers = {prefix + n: m for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
    pruner = Pruner(layers, seed=src.seed, head_dim=src.head_dim)
    hidden = torch.randn(2, 128, src.hidden_size)
    mask = make_attention_mask(src, hidden, torch.ones(2, 128, dtype=torch.long))
    sigma = {m: quality.measure_speed(block, pruner, hidden, mask, (), m, repeats=5)
             for m in ("structured", "magnitude")}
    assert 0.0 <= sigma["magnitude"] <= 1.0 and 0.0 <= sigma["structured"] <= 1.0
    assert sigma["structured"] > sigma["magnitude"] + 0.3, sigma


def test_profile_command(tmp_path, capsys):
    from coinfer.cli import main

    calibration = tmp_path / "cal.txt"
    calibration.write_text("# a comment\n" + "\n".join(FEW[:4]) + "\n\n")
    args = ["profile", "--model", "random:bert-tiny", "--calibration", str(calibration), "--methods", "magnitude",
            "--ratios", "0.2,0.6", "--cache-dir", str(tmp_path / "cache")]
    assert main(args + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    model = QualityModel.from_dict(out)
    assert model.methods == ("magnitude",) and model.ratios == (0.2, 0.6, 1.0) and model.sentences == 4
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1
    assert main(args) == 0                                   # the table, from the cache
    captured = capsys.readouterr()
    assert "min_ratio" in captured.out and "speed sigma" in captured.out and "[profile]" not in captured.err
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    assert main(["profile", "--model", "random:bert-tiny", "--calibration", str(empty)]) == 2
    assert "no sentences" in capsys.readouterr().err


def test_profile_help_explains_the_floor(capsys):
    from coinfer.cli import main

    with pytest.raises(SystemExit):
        main(["profile", "--help"])
    text = capsys.readouterr().out
    assert "quality floor" in text and "cosine" in text
