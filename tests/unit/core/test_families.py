"""Real checkpoint families load as their own libraries load them.

Small random folders are built from configs with transformers (saved as safetensors, some under a
task model's prefix as real checkpoints are), with sentence-transformers files written by hand; at
every split point DevicePart then ServerPart equals `SentenceTransformer(folder).encode` run whole.
Also: model identity by content (`ModelSource.fingerprint`) and the `.bin`-only refusal.
"""
import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from coinfer.errors import UsageError
from coinfer.models import embedded_model_path, resolve_model
from coinfer.pruning import Pruner
from coinfer.split import DevicePart, ServerPart

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
SENTENCES = [
    "The device runs the first blocks.",
    "Hidden states cross the link to the edge server, which finishes the job and pools them.",
    "Short one.",
    "A",
]
COMMON = dict(vocab_size=30522, initializer_range=0.2)


def _configs():
    from transformers import BertConfig, DistilBertConfig, ElectraConfig, MPNetConfig, RobertaConfig

    return {
        "bert": BertConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
                           max_position_embeddings=128, **COMMON),
        # RoBERTa's positions start after the padding id: 514 positions hold 512 tokens.
        "roberta": RobertaConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
                                 max_position_embeddings=514, pad_token_id=1, type_vocab_size=1, **COMMON),
        # Every electra-small: embeddings narrower than the hidden states (embeddings_project).
        "electra": ElectraConfig(embedding_size=64, hidden_size=128, num_hidden_layers=3, num_attention_heads=4,
                                 intermediate_size=192, max_position_embeddings=128, **COMMON),
        "distilbert": DistilBertConfig(dim=64, n_layers=3, n_heads=4, hidden_dim=96, max_position_embeddings=128,
                                       **COMMON),
        "mpnet": MPNetConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
                             max_position_embeddings=130, **COMMON),
    }


def _model_class(family):
    import transformers

    # Real electra-small / distilbert checkpoints are task models: their tensors carry a prefix.
    return {"electra": transformers.ElectraForPreTraining,
            "distilbert": transformers.DistilBertForMaskedLM}.get(family, transformers.AutoModel)


def write_st_files(folder: Path, pooling, normalize: bool, max_seq_length: int | None = None,
                   legacy_keys: bool = True) -> None:
    """modules.json, <n>_Pooling/config.json (and 2_Normalize) as sentence-transformers saves them."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    dim = json.loads((folder / "config.json").read_text())
    dim = dim.get("hidden_size") or dim.get("dim")
    modes = [pooling] if isinstance(pooling, str) else list(pooling)
    if legacy_keys:
        cfg = {"word_embedding_dimension": dim}
        cfg.update({f"pooling_mode_{key}": mode in modes for key, mode in
                    (("cls_token", "cls"), ("mean_tokens", "mean"), ("max_tokens", "max"),
                     ("mean_sqrt_len_tokens", "mean_sqrt_len_tokens"))})
    else:
        cfg = {"embedding_dimension": dim, "pooling_mode": modes[0] if len(modes) == 1 else modes}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(cfg))
    if max_seq_length is not None:
        (folder / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}))


def build_folder(root: Path, name: str, family: str, seed: int = 0) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    model = _model_class(family)._from_config(_configs()[family]) if family in ("electra", "distilbert") \
        else _model_class(family).from_config(_configs()[family])
    model.save_pretrained(str(folder), safe_serialization=True)
    for f in TOKENIZER_FILES:  # the embedded model's (bert-base-uncased) vocabulary
        if (embedded_model_path() / f).exists():
            shutil.copy(embedded_model_path() / f, folder / f)
    return folder


# name: (family, pooling or None for a plain transformers folder, normalize, max_seq_length, legacy keys)
VARIANTS = {
    "bert-plain": ("bert", None, False, None, True),
    "bert-cls-norm": ("bert", "cls", True, 64, True),        # bge-style
    "bert-max": ("bert", "max", False, None, False),
    "bert-cls-mean": ("bert", ("cls", "mean"), True, None, False),
    "roberta-mean-norm": ("roberta", "mean", True, None, True),
    "electra-mean": ("electra", "mean", False, None, True),
    "electra-cls": ("electra", "cls", True, None, False),
    "distilbert-mean-norm": ("distilbert", "mean", True, 100, True),
    "mpnet-mean-norm": ("mpnet", "mean", True, None, True),  # all-mpnet-base-v2's head
    "mpnet-sqrt": ("mpnet", "mean_sqrt_len_tokens", False, None, True),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    out = {}
    for name, (family, pooling, normalize, max_len, legacy) in VARIANTS.items():
        folder = build_folder(root, name, family)
        if pooling is not None:
            write_st_files(folder, pooling, normalize, max_len, legacy)
        out[name] = folder
    return out


def sentence_transformers_encode(folder: Path, sentences):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    return model.encode(sentences, convert_to_tensor=True), model


def split_encode(src, k, sentences, rho=1.0):
    ids, mask = src.tokenize(sentences)
    device, server = DevicePart(src, k), ServerPart(src, k)
    if rho < 1.0:
        Pruner.for_part(device, src, rho, "structured")
        Pruner.for_part(server, src, rho, "structured")
    hidden = device(ids, mask)
    return hidden if device.runs_alone else server(hidden, mask)


def assert_close(got, expected, what):
    assert got.shape == expected.shape, what
    diff = (got - expected).abs().max().item()
    cosine = torch.nn.functional.cosine_similarity(got.double(), expected.double(), dim=1).min().item()
    assert diff <= 1e-5 and cosine >= 0.99999, f"{what}: max abs diff {diff}, min cosine {cosine}"


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_split_point_matches_sentence_transformers(folders, name):
    folder = folders[name]
    expected, st_model = sentence_transformers_encode(folder, SENTENCES)
    src = resolve_model(str(folder))
    # sentence-transformers' own limit ignores RoBERTa's / MPNet's position offset (it would crash
    # at that length); ours is never longer, and equal where it does not crash.
    offset = 2 if src.config.model_type in ("roberta", "mpnet") else 0
    assert src.max_seq_length == min(st_model.max_seq_length, src.config.max_position_embeddings - offset)
    for k in range(src.num_blocks + 1):
        assert_close(split_encode(src, k, SENTENCES), expected, f"{name} k={k}")


def test_pooling_read_from_sentence_transformers_files(folders):
    assert resolve_model(str(folders["bert-plain"])).pooling.mode == "mean"
    assert not resolve_model(str(folders["bert-plain"])).pooling.normalize  # as SentenceTransformer(folder)
    cls = resolve_model(str(folders["bert-cls-norm"])).pooling
    assert (cls.mode, cls.normalize) == ("cls", True)
    assert resolve_model(str(folders["bert-max"])).pooling.mode == "max"
    assert resolve_model(str(folders["bert-cls-mean"])).pooling.mode == "cls+mean"


def test_embedded_minilm_unchanged(minilm):
    assert (minilm.pooling.mode, minilm.pooling.normalize, minilm.max_seq_length) == ("mean", True, 256)
    expected, _ = sentence_transformers_encode(minilm.folder, SENTENCES)
    for k in (0, 3, minilm.num_blocks):
        assert_close(split_encode(minilm, k, SENTENCES), expected, f"minilm k={k}")


def test_unsupported_module_is_refused(tmp_path, folders):
    folder = tmp_path / "dense"
    shutil.copytree(folders["bert-cls-norm"], folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(UsageError, match="Dense"):
        resolve_model(str(folder))


def test_roberta_long_input_truncates_instead_of_crashing(folders):
    from transformers import AutoModel

    src = resolve_model(str(folders["roberta-mean-norm"]))
    assert src.max_seq_length == 514 - 1 - 1
    long = " ".join(["word"] * 700)
    ids, mask = src.tokenize([long, "short"])
    assert ids.shape[1] == 512
    whole = AutoModel.from_pretrained(str(src.folder), local_files_only=True).eval()
    with torch.no_grad():
        hidden = whole(input_ids=ids, attention_mask=mask).last_hidden_state
    weights = mask.unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=1)
    for k in (0, 1, src.num_blocks):
        assert_close(split_encode(src, k, [long, "short"]), expected, f"roberta long k={k}")


def test_electra_projection_is_on_the_device(folders):
    src = resolve_model(str(folders["electra-mean"]))
    device = DevicePart(src, 1)
    assert device.segment.embedding.project is not None
    ids, mask = src.tokenize(SENTENCES)
    assert device(ids, mask).shape[-1] == 128


@pytest.mark.parametrize("name", ["distilbert-mean-norm", "bert-cls-norm"])
def test_structured_pruning_runs_on_new_families(folders, name):
    src = resolve_model(str(folders[name]))
    for k in (0, 2, src.num_blocks):
        out = split_encode(src, k, SENTENCES, rho=0.5)
        assert torch.isfinite(out).all()


def test_mpnet_structured_pruning_keeps_heads(folders):
    """MPNet's FFN neurons are pruned; its heads are not (position bias is per configured head)."""
    src = resolve_model(str(folders["mpnet-mean-norm"]))
    out = split_encode(src, 1, SENTENCES, rho=0.5)
    assert torch.isfinite(out).all()


# --- identity ------------------------------------------------------------------------------------
def test_fingerprint_same_weights_at_two_paths_agree(tmp_path, folders):
    other = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(folders["mpnet-mean-norm"], other)
    a, b = resolve_model(str(folders["mpnet-mean-norm"])), resolve_model(str(other))
    assert a.name != b.name and a.fingerprint == b.fingerprint
    assert len(a.fingerprint) == 16 and int(a.fingerprint, 16) >= 0


def test_fingerprint_sees_weights_pooling_and_seed(tmp_path, folders):
    base = resolve_model(str(folders["bert-cls-norm"]))
    # Other weights, same config and files.
    other = build_folder(tmp_path, "other-weights", "bert", seed=1)
    write_st_files(other, "cls", True, 64)
    assert resolve_model(str(other)).fingerprint != base.fingerprint
    # Same weights, other pooling.
    pooled = tmp_path / "other-pooling"
    shutil.copytree(folders["bert-cls-norm"], pooled)
    write_st_files(pooled, "mean", True, 64)
    assert resolve_model(str(pooled)).fingerprint != base.fingerprint
    assert resolve_model("random:bert-tiny").fingerprint == resolve_model("random:bert-tiny").fingerprint
    assert resolve_model("random:bert-tiny").fingerprint != resolve_model("random:bert-tiny", seed=1).fingerprint


def test_random_weights_named_like_minilm_differ_from_minilm(tmp_path, minilm):
    from transformers import AutoConfig, AutoModel

    folder = tmp_path / "all-MiniLM-L6-v2"
    folder.mkdir()
    for f in embedded_model_path().iterdir():
        if f.is_dir():
            shutil.copytree(f, folder / f.name)
        elif not f.name.endswith(".safetensors"):
            shutil.copy(f, folder / f.name)
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(str(folder), local_files_only=True)) \
        .save_pretrained(str(folder), safe_serialization=True)
    fake = resolve_model(str(folder))
    assert fake.name == minilm.name
    assert fake.fingerprint != minilm.fingerprint


def test_fingerprint_of_minilm_is_fast_and_cached():
    src = resolve_model("minilm")
    started = time.perf_counter()
    first = src.fingerprint
    assert time.perf_counter() - started < 2.0
    started = time.perf_counter()
    assert src.fingerprint == first and time.perf_counter() - started < 0.01


class _FakeClient:
    address = "server:50051"

    def __init__(self, info):
        self._info = info

    def wait_ready(self, timeout_s):
        return None

    def info(self, timeout_s=None):
        return self._info


def _runtime_with(info, src):
    from coinfer.device.runtime import DeviceRuntime

    runtime = DeviceRuntime(src, src.num_blocks)  # runs alone, so it needs no server to be built
    runtime.client = _FakeClient(info)
    return runtime


def test_connect_compares_fingerprints(tmp_path, folders):
    from coinfer.protos import coinfer_pb2 as pb

    src = resolve_model(str(folders["bert-cls-norm"]))
    same = pb.ServerInfo(model_id="some-other-folder-name", split_point=src.num_blocks, plan_epoch=0,
                         model_fingerprint=src.fingerprint)
    assert _runtime_with(same, src).connect().model_fingerprint == src.fingerprint
    other = pb.ServerInfo(model_id=src.name, split_point=src.num_blocks, plan_epoch=0, model_fingerprint="0123456789abcdef")
    with pytest.raises(UsageError, match=f"0123456789abcdef.*{src.fingerprint}"):
        _runtime_with(other, src).connect()
    legacy = pb.ServerInfo(model_id="another", split_point=src.num_blocks, plan_epoch=0)  # a server reporting none
    with pytest.raises(UsageError, match="another"):
        _runtime_with(legacy, src).connect()


def test_bin_only_folder_refusal_says_how_to_convert(tmp_path, folders):
    folder = tmp_path / "bin-only"
    folder.mkdir()
    shutil.copy(folders["bert-plain"] / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    src = resolve_model(str(folder))
    with pytest.raises(UsageError, match=r"save_pretrained\(.*safe_serialization=True\)"):
        DevicePart(src, 1)
