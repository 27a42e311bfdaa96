"""Engines per half (coinfer.engines): compile and onnxruntime answer as eager does.

Every engine is held to eager at cosine >= 0.99999 on the pooled output and to close hidden states on
the real tokens (padded positions are never read downstream, and eager may pack them away to zeros),
on padded batches of two shapes, at every split point of random:bert-tiny and all-MiniLM-L6-v2. Also:
the ONNX cache is reused, refresh() after a pruning change gives the pruned answer, the halves
(ServerHalf, DeviceRuntime) use the engine and refresh it on a plan change, other families and BART's
encoder export, and a missing onnxruntime is a UsageError naming the extra.
"""
import os
import sys

import pytest
import torch

from coinfer import engines
from coinfer.engines import OnnxRuntimeEngine, check_engine, prepare_engine
from coinfer.errors import UsageError
from coinfer.pruning import Pruner
from coinfer.split import DevicePart, GenerationOptions, ServerPart

pytest.importorskip("onnxruntime")

BATCHES = [
    ["The device runs the first blocks.",
     "Hidden states cross the link to the edge server, which finishes the job and pools them.",
     "Short one."],
    ["A"],  # batch 1, no padding: a shape of its own for compile and for the exported graph
]
MIN_COSINE = 0.99999


@pytest.fixture(autouse=True)
def onnx_cache(tmp_path_factory, monkeypatch):
    """One ONNX cache per test module run, never the user's ~/.cache."""
    folder = tmp_path_factory.getbasetemp() / "onnx-cache"
    monkeypatch.setenv("COINFER_ONNX_CACHE", str(folder))
    return folder


def cosine(a, b):
    return float(torch.nn.functional.cosine_similarity(a.float().flatten(1), b.float().flatten(1), dim=1).min())


def assert_same(out, expected, mask):
    if out.dim() == 3:  # hidden states: the real tokens (padding is masked out wherever they go)
        real = mask.bool()
        torch.testing.assert_close(out[real], expected[real], rtol=1e-4, atol=1e-4)
        out, expected = out[real], expected[real]
    else:
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert cosine(out, expected) >= MIN_COSINE


def check_every_split(src, engine: str):
    inputs = [src.tokenize(b) for b in BATCHES]
    for k in range(src.num_blocks + 1):
        device, server = DevicePart(src, k), ServerPart(src, k)
        device_engine, server_engine = prepare_engine(device, engine), prepare_engine(server, engine)
        assert "fell back" not in device_engine.describe() + server_engine.describe()
        for ids, mask in inputs:
            hidden = device(ids, mask)
            assert_same(device_engine(ids, mask), hidden, mask)
            if not device.runs_alone:
                assert_same(server_engine(hidden, mask), server(hidden, mask), mask)


def test_names_and_eager_is_the_part_itself(tiny_bert):
    assert engines.ENGINES == ("eager", "compile", "onnxruntime")
    with pytest.raises(UsageError, match="--engine must be one of"):
        check_engine("tensorrt")
    part = ServerPart(tiny_bert, 1)
    eager = prepare_engine(part)
    ids, mask = tiny_bert.tokenize(BATCHES[0])
    hidden = DevicePart(tiny_bert, 1)(ids, mask)
    assert torch.equal(eager(hidden, mask), part(hidden, mask)) and eager.describe() == "eager"


@pytest.mark.slow  # 9 small exports
def test_onnxruntime_equals_eager_at_every_split_tiny_bert(tiny_bert):
    check_every_split(tiny_bert, "onnxruntime")


@pytest.mark.slow  # 13 exports of MiniLM halves (a few seconds each on 2 cores)
def test_onnxruntime_equals_eager_at_every_split_minilm(minilm):
    check_every_split(minilm, "onnxruntime")


@pytest.mark.slow  # torch.compile takes a minute or more per half on a 2-core machine: one split point
def test_compile_equals_eager_at_one_split(tiny_bert):
    ids, mask = tiny_bert.tokenize(BATCHES[0])
    device, server = DevicePart(tiny_bert, 2), ServerPart(tiny_bert, 2)
    hidden = device(ids, mask)
    engine = prepare_engine(server, "compile")
    assert engine.describe() == "compile"
    for x, m in ((hidden, mask), (hidden[:1, :3], mask[:1, :3]), (hidden[:2], mask[:2])):
        assert_same(engine(x, m), server(x, m), m)


def test_compile_failure_falls_back_to_eager(tiny_bert, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    part = ServerPart(tiny_bert, 0)
    engine = prepare_engine(part, "compile")
    assert "fell back to eager" in engine.describe() and "no compiler here" in caplog.text
    ids, mask = tiny_bert.tokenize(BATCHES[0])
    assert torch.equal(engine(ids, mask), part(ids, mask))


def test_onnx_cache_is_reused(tiny_bert, onnx_cache):
    part = ServerPart(tiny_bert, 3)
    first = prepare_engine(part, "onnxruntime")
    path = first.path
    assert path.parent == onnx_cache and path.exists() and tiny_bert.fingerprint in path.name
    exported, mtime = engines.EXPORTS[str(path)], path.stat().st_mtime_ns
    second = prepare_engine(ServerPart(tiny_bert, 3), "onnxruntime")  # a second build (e.g. a restart)
    assert second.path == path and engines.EXPORTS[str(path)] == exported and path.stat().st_mtime_ns == mtime
    ids, mask = tiny_bert.tokenize(BATCHES[0])
    hidden = DevicePart(tiny_bert, 3)(ids, mask)
    assert_same(second(hidden, mask), part(hidden, mask), mask)


@pytest.mark.parametrize("method", ["magnitude", "structured"])
def test_refresh_after_pruning_gives_the_pruned_answer(tiny_bert, method):
    ids, mask = tiny_bert.tokenize(BATCHES[0])
    hidden = DevicePart(tiny_bert, 1)(ids, mask)
    part = ServerPart(tiny_bert, 1)
    pruner = Pruner.for_part(part, tiny_bert, 1.0, method)
    engine = prepare_engine(part, "onnxruntime", pruner)
    dense = engine(hidden, mask)
    engine.prepare(0.5, method)  # ahead of the swap: exported from a pruned copy, the part untouched
    assert_same(part(hidden, mask), dense, mask)
    pruned_path = engine.cache_dir / f"{engine.cache_key(0.5, method)}.onnx"
    assert pruned_path.exists()
    exports = sum(engines.EXPORTS.values())
    pruner.apply(0.5, method)
    engine.refresh()
    assert sum(engines.EXPORTS.values()) == exports  # the swap loaded what prepare() exported
    pruned = part(hidden, mask)
    assert (pruned - dense).abs().max() > 1e-2  # pruning changed the answer (far beyond the tolerance) ...
    assert_same(engine(hidden, mask), pruned, mask)  # ... and the engine gives the pruned one
    pruner.apply(1.0, method)
    engine.refresh()
    assert_same(engine(hidden, mask), dense, mask)


def test_server_half_computes_with_its_engine_and_follows_plans(tiny_bert):
    from coinfer.server.half import ServerHalf

    ids, mask = tiny_bert.tokenize(BATCHES[0])
    hidden = DevicePart(tiny_bert, 2)(ids, mask)
    eager, ort = ServerHalf(tiny_bert, 2), ServerHalf(tiny_bert, 2, engine="onnxruntime")
    assert isinstance(ort.state.engine, OnnxRuntimeEngine)
    generation = GenerationOptions()
    for epoch, (split, rho) in enumerate([(2, 1.0), (2, 0.6), (1, 0.6)], start=1):
        if epoch > 1:
            for half in (eager, ort):
                half.apply(epoch, split, rho, "magnitude")
            hidden = DevicePart(tiny_bert, split)(ids, mask)
        expected = eager.run(eager.state, hidden, mask, generation)[0]
        assert_same(ort.run(ort.state, hidden, mask, generation)[0], expected, mask)


def test_device_runtime_computes_with_its_engine_and_follows_plans(tiny_bert):
    from coinfer.device.runtime import DeviceRuntime

    k = tiny_bert.num_blocks  # runs alone: no server needed
    eager, ort = DeviceRuntime(tiny_bert, k), DeviceRuntime(tiny_bert, k, engine="onnxruntime")
    for rho in (1.0, 0.7):
        if rho < 1.0:
            eager.set_pruning(rho, "magnitude")
            ort.set_pruning(rho, "magnitude")
        expected = eager.infer(BATCHES[0]).output
        assert_same(ort.infer(BATCHES[0]).output, expected, None)


def _family_folder(root, family):
    import transformers

    from coinfer.models import embedded_model_path

    common = dict(vocab_size=30522, initializer_range=0.2)
    config = {
        "roberta": transformers.RobertaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                              intermediate_size=96, max_position_embeddings=514, pad_token_id=1,
                                              type_vocab_size=1, **common),
        "electra": transformers.ElectraConfig(embedding_size=32, hidden_size=64, num_hidden_layers=2,
                                              num_attention_heads=4, intermediate_size=96,
                                              max_position_embeddings=128, **common),
        "distilbert": transformers.DistilBertConfig(dim=64, n_layers=2, n_heads=4, hidden_dim=96,
                                                    max_position_embeddings=128, **common),
        "mpnet": transformers.MPNetConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=96, max_position_embeddings=130, **common),
    }[family]
    torch.manual_seed(0)
    folder = root / family
    transformers.AutoModel.from_config(config).save_pretrained(str(folder), safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (embedded_model_path() / name).exists():
            (folder / name).write_bytes((embedded_model_path() / name).read_bytes())
    return folder


@pytest.mark.slow  # four small models built and exported
@pytest.mark.parametrize("family", ["roberta", "electra", "distilbert", "mpnet"])
def test_onnxruntime_other_families(family, tmp_path):
    from coinfer.models import resolve_model

    src = resolve_model(str(_family_folder(tmp_path, family)))
    ids, mask = src.tokenize(BATCHES[0])
    device, server = DevicePart(src, 1), ServerPart(src, 1)
    hidden = device(ids, mask)
    assert_same(prepare_engine(device, "onnxruntime")(ids, mask), hidden, mask)
    assert_same(prepare_engine(server, "onnxruntime")(hidden, mask), server(hidden, mask), mask)


def test_bart_encoder_in_onnxruntime_generation_eager(tiny_bart):
    ids, mask = tiny_bart.tokenize(BATCHES[0])
    device, server = DevicePart(tiny_bart, 2), ServerPart(tiny_bart, 2)
    hidden = device(ids, mask)
    assert_same(prepare_engine(device, "onnxruntime")(ids, mask), hidden, mask)
    engine = prepare_engine(server, "onnxruntime")
    assert "fell back" not in engine.describe()
    options = GenerationOptions(max_new_tokens=6)
    assert torch.equal(engine(hidden, mask, options), server(hidden, mask, options))


def test_missing_onnxruntime_is_a_clear_usage_error(tiny_bert, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    for make in (lambda: check_engine("onnxruntime"),
                 lambda: prepare_engine(ServerPart(tiny_bert, 1), "onnxruntime")):
        with pytest.raises(UsageError, match=r"pip install 'coinfer\[onnx\]'"):
            make()
    from coinfer.server.half import ServerHalf

    with pytest.raises(UsageError, match="onnxruntime"):
        ServerHalf(tiny_bert, 1, engine="onnxruntime")
    assert check_engine("eager") == "eager" and check_engine("compile") == "compile"


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("COINFER_ONNX_CACHE", str(tmp_path / "a"))
    assert engines.onnx_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("COINFER_ONNX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert engines.onnx_cache_dir() == tmp_path / "xdg" / "coinfer" / "onnx"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert engines.onnx_cache_dir() == type(tmp_path).home() / ".cache" / "coinfer" / "onnx"
    assert os.environ.get("COINFER_ONNX_CACHE") is None


def test_onnxruntime_groups_rows_by_length_and_each_answer_equals_the_row_alone(tiny_bert):
    """A merged batch of random lengths 1..512, some left-padded: the ORT engine computes it in groups
    of similar length (more than one run), and every pooled answer equals that sequence computed alone."""
    generator = torch.Generator().manual_seed(19)
    lengths = [1, 512, 3, 40, 41, 300, 7, 128] + torch.randint(1, 513, (8,), generator=generator).tolist()
    ids = torch.randint(1000, 2000, (len(lengths), 512), generator=generator)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        if row % 5 == 4:
            mask[row, 512 - n:] = 1  # left padding: the row's extent is the whole width
        else:
            mask[row, :n] = 1
    part = ServerPart(tiny_bert, 0)
    engine = prepare_engine(part, "onnxruntime")
    runs = []
    real_run = engine._run
    engine._run = lambda x, m: runs.append(tuple(x.shape)) or real_run(x, m)
    out = engine(ids, mask)
    assert len(runs) > 1 and all(shape[1] < 512 for shape in runs[:1]), runs  # grouped, short rows cut short
    assert sum(shape[0] for shape in runs) == len(lengths)
    for row in range(len(lengths)):
        alone = part(ids[row:row + 1], mask[row:row + 1])
        assert (out[row:row + 1] - alone).abs().max().item() <= 1e-5, (row, lengths[row])
