"""Cutting a model after block k: the device half and the server half, each built on its own.

Blocks are numbered 1..L in the paper and 0..L-1 here. At split point k the device holds the embedding
stage and blocks [0, k); the server holds blocks [k, L) and what follows: pooling into a sentence
embedding (BERT family) or BART's decoder and `generate`. k = 0 sends token ids (the server embeds);
for BERT, k = L computes everything on the device. Only the modules of one half are ever built, and
they are filled from the checkpoint by canonical name (coinfer.models), so a process holds only its
half of the weights.

The modules are transformers' own classes (embeddings, encoder layers, BART's generation model), and
the attention mask is made by the same function transformers' models use, so a split computes what
the whole model computes.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
import torch
from torch import nn

from coinfer import packing
from coinfer.errors import UsageError
from coinfer.models import ModelSource

OUTPUT_SENTENCE_EMBEDDING = "sentence_embedding"
OUTPUT_GENERATED_TOKENS = "generated_tokens"


@dataclass(frozen=True)
class GenerationOptions:
    """Greedy (or beam) decoding limits; 0 means the model's own default."""

    max_new_tokens: int = 0
    num_beams: int = 0
    min_new_tokens: int = 0

    def kwargs(self) -> dict:
        out = {"do_sample": False}
        for key in ("max_new_tokens", "num_beams", "min_new_tokens"):
            if getattr(self, key):
                out[key] = int(getattr(self, key))
        return out


def _with(config, **changes):
    changed = copy.deepcopy(config)
    for key, value in changes.items():
        setattr(changed, key, value)
    return changed


def _prepare_config(src: ModelSource):
    """The config with its attention implementation settled (see ModelSource.skeleton)."""
    src.skeleton  # noqa: B018 - building the skeleton is what settles it
    return src.config


class EmbeddingStage(nn.Module):
    """Token ids -> the hidden states that enter block 0 (ELECTRA: after `embeddings_project` when its
    embedding width differs from the hidden width, as ElectraModel does)."""

    def __init__(self, src: ModelSource):
        super().__init__()
        config = _prepare_config(src)
        self.family = src.family
        self.project = None
        if src.family == "bart":
            from transformers.models.bart.modeling_bart import BartEncoder

            # An encoder with no layers is exactly BART's embedding stage (scaled tokens + positions + norm).
            self.embed = BartEncoder(_with(config, encoder_layers=0))
        else:
            self.embed = type(src.skeleton.embeddings)(config)
            skeleton_project = getattr(src.skeleton, "embeddings_project", None)
            if skeleton_project is not None:
                self.project = src.load_into(
                    nn.Linear(skeleton_project.in_features, skeleton_project.out_features), "embeddings_project.")
        src.load_into(self.embed, src.embedding_prefix)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.family == "bart":
            return self.embed(input_ids=input_ids).last_hidden_state
        hidden = self.embed(input_ids=input_ids)
        return self.project(hidden) if self.project is not None else hidden


def build_embedding_stage(src: ModelSource) -> EmbeddingStage:
    return EmbeddingStage(src)


def _skeleton_layers(src: ModelSource):
    if src.family == "bart":
        return src.skeleton.encoder.layers
    if src.config.model_type == "distilbert":
        return src.skeleton.transformer.layer
    return src.skeleton.encoder.layer


def build_block(src: ModelSource, i: int, config=None) -> nn.Module:
    """Block i filled from the checkpoint; `config` (default: the model's) is what its modules keep."""
    import inspect

    config = config if config is not None else _prepare_config(src)
    cls = type(_skeleton_layers(src)[0])
    # DistilBERT's and MPNet's layers take no layer index.
    block = cls(config, layer_idx=i) if "layer_idx" in inspect.signature(cls.__init__).parameters else cls(config)
    return src.load_into(block, src.block_prefix(i))


class PositionBias(nn.Module):
    """MPNet's relative position bias: one table shared by all layers (encoder.relative_attention_bias),
    computed as MPNetEncoder computes it and added to every layer's attention scores."""

    def __init__(self, src: ModelSource):
        super().__init__()
        from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

        self.encoder = src.load_into(MPNetEncoder(_with(_prepare_config(src), num_hidden_layers=0)), "encoder.")

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.encoder.compute_position_bias(hidden)


def build_generator(src: ModelSource) -> nn.Module:
    """BART's decoder, shared embedding and LM head, as a generation model whose encoder is empty.

    The encoder's blocks run in EncoderSegment; `generate` is fed their output as `encoder_outputs`.
    """
    from transformers import BartForConditionalGeneration, GenerationConfig

    config = _prepare_config(src)
    model = BartForConditionalGeneration(_with(config, encoder_layers=0))
    src.load_into(model)
    if src.folder is not None and (src.folder / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(str(src.folder), local_files_only=True)
    return model


def make_attention_mask(src: ModelSource, hidden: torch.Tensor, attention_mask: torch.Tensor):
    """The blocks' mask from a [batch, seq] 0/1 mask, made as transformers' own encoders make it."""
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=src.config, inputs_embeds=hidden, attention_mask=attention_mask)


class EncoderSegment(nn.Module):
    """Blocks [start, stop), optionally preceded by the embedding stage. A batch with padding runs its
    blocks packed, on its real tokens only (coinfer.packing): each row equals that sequence run alone,
    and padded positions come out as zeros."""

    def __init__(self, src: ModelSource, start: int, stop: int, with_embedding: bool):
        super().__init__()
        self.src = src
        self.start, self.stop = start, stop
        self.embedding = build_embedding_stage(src) if with_embedding else None
        # Blocks that can compute packed keep a config of their own naming the packed attention function
        # (coinfer.packing), which is plain sdpa unless a call passes a packing; MPNet keeps the padded path.
        self.packs = packing.supported(_prepare_config(src))
        block_config = None
        if self.packs:
            packing.register()
            block_config = _with(src.config, _attn_implementation=packing.PACKED_ATTENTION)
        self.blocks = nn.ModuleList(build_block(src, i, block_config) for i in range(start, stop))
        needs_bias = src.config.model_type == "mpnet" and stop > start
        self.position_bias = PositionBias(src) if needs_bias else None

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embedding(x) if self.embedding is not None else x
        if not len(self.blocks):
            return hidden
        # the embedding stage stays padded (cheap); the blocks see real tokens only when there is padding
        packed = packing.plan(attention_mask) if self.packs else None
        if packed is not None:
            return packed.unpack(self._run_blocks(packed.pack(hidden), None, (), {packing.PACKING_KWARG: packed}))
        mask = make_attention_mask(self.src, hidden, attention_mask)
        extra = (self.position_bias(hidden),) if self.position_bias is not None else ()
        return self._run_blocks(hidden, mask, extra, {})

    def _run_blocks(self, hidden: torch.Tensor, mask, extra: tuple, kwargs: dict) -> torch.Tensor:
        for block in self.blocks:
            out = block(hidden, mask, *extra, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def linear_layers(self) -> dict[str, nn.Linear]:
        """Canonical name -> Linear, for every prunable weight of this segment."""
        found = {}
        for offset, block in enumerate(self.blocks):
            prefix = self.src.block_prefix(self.start + offset)
            for name, module in block.named_modules():
                if isinstance(module, nn.Linear):
                    found[prefix + name] = module
        return found


def _pool_one(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """One of sentence-transformers' pooling modes, computed as its Pooling module computes it."""
    if mode == "cls":
        first = attention_mask.to(torch.int).argmax(dim=1)
        return torch.gather(hidden, 1, first.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])).squeeze(1)
    if mode == "max":
        mask = attention_mask.unsqueeze(-1).expand_as(hidden)
        return hidden.masked_fill(mask == 0, float("-inf")).max(dim=1).values
    accumulate = torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype
    if mode in ("mean", "mean_sqrt_len_tokens"):
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        total = (hidden * weights).sum(1, dtype=accumulate)
        count = weights.sum(1, dtype=accumulate).clamp(min=1e-9)
        return (total / (count if mode == "mean" else count.sqrt())).to(hidden.dtype)
    if mode == "weightedmean":
        positions = torch.arange(1, hidden.shape[1] + 1, dtype=accumulate, device=hidden.device).view(1, -1, 1)
        positions = positions - attention_mask.to(torch.int32).argmax(dim=1).view(-1, 1, 1)  # left padding
        weights = attention_mask.unsqueeze(-1).to(accumulate) * positions
        return ((hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)).to(hidden.dtype)
    if mode == "lasttoken":
        seq_len = hidden.shape[1]
        values, indices = attention_mask.flip(1).max(1)
        indices = torch.where(values == 0, seq_len - 1, indices)
        gather = (seq_len - indices - 1).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
        masked = hidden * attention_mask.unsqueeze(-1).to(hidden.dtype)
        return torch.gather(masked, 1, gather).squeeze(1)
    raise UsageError(f"unknown pooling mode {mode!r}")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str, normalize: bool) -> torch.Tensor:
    """Sentence embedding from token states, as sentence-transformers' Pooling (+ Normalize) modules do.
    `mode` is one mode or several joined by "+" (concatenated in that order, as sentence-transformers does)."""
    modes = mode.split("+")
    parts = [_pool_one(hidden, attention_mask, m) for m in modes]
    pooled = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
    return nn.functional.normalize(pooled, p=2, dim=1) if normalize else pooled


def check_split(src: ModelSource, k: int) -> int:
    if not isinstance(k, int) or not 0 <= k <= src.num_blocks:
        raise UsageError(f"split point {k!r} is out of range for {src.name}: choose 0..{src.num_blocks}")
    return k


class DevicePart(nn.Module):
    """Embedding stage and blocks [0, k). For a BERT-family model at k = L it also pools, so the
    device answers alone."""

    def __init__(self, src: ModelSource, k: int):
        super().__init__()
        self.src, self.k = src, check_split(src, k)
        self.segment = EncoderSegment(src, 0, k, with_embedding=k > 0) if k > 0 else None
        self.runs_alone = src.family == "bert" and k == src.num_blocks

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states after block k ([batch, seq, hidden]); k = 0: the token ids unchanged; and
        when the device runs alone, the final output."""
        if self.segment is None:
            return input_ids
        hidden = self.segment(input_ids, attention_mask)
        if self.runs_alone:
            return pool(hidden, attention_mask, self.src.pooling.mode, self.src.pooling.normalize)
        return hidden

    def linear_layers(self) -> dict[str, nn.Linear]:
        return self.segment.linear_layers() if self.segment is not None else {}


class ServerPart(nn.Module):
    """Blocks [k, L) and the head (pooling, or BART's decoder and generation)."""

    def __init__(self, src: ModelSource, k: int):
        super().__init__()
        self.src, self.k = src, check_split(src, k)
        self.segment = EncoderSegment(src, k, src.num_blocks, with_embedding=k == 0)
        self.generator = build_generator(src) if src.family == "bart" else None
        self.output_kind = OUTPUT_GENERATED_TOKENS if self.generator is not None else OUTPUT_SENTENCE_EMBEDDING

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor,
                generation: GenerationOptions = GenerationOptions()) -> torch.Tensor:
        hidden = self.segment(x, attention_mask)
        if self.generator is None:
            return pool(hidden, attention_mask, self.src.pooling.mode, self.src.pooling.normalize)
        return generate_from_encoder(self.generator, hidden, attention_mask, generation)

    def linear_layers(self) -> dict[str, nn.Linear]:
        found = self.segment.linear_layers()
        if self.generator is not None:
            found.update(decoder_linear_layers(self.generator))
        return found


def decoder_linear_layers(generation_model: nn.Module) -> dict[str, nn.Linear]:
    """The decoder's Linear layers (not lm_head: it is the tied token embedding)."""
    return {name: module for name, module in generation_model.named_modules()
            if isinstance(module, nn.Linear) and name.startswith("model.decoder.")}


def generate_from_encoder(model, hidden: torch.Tensor, attention_mask: torch.Tensor,
                          options: GenerationOptions) -> torch.Tensor:
    from transformers.modeling_outputs import BaseModelOutput

    return model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
                          attention_mask=attention_mask, **options.kwargs())


def block_tensors(src: ModelSource, i: int) -> dict[str, torch.Tensor]:
    """Block i's weights under their canonical names."""
    return dict(build_block(src, i).state_dict(prefix=src.block_prefix(i)))


def embedding_tensors(src: ModelSource) -> dict[str, torch.Tensor]:
    stage = build_embedding_stage(src)
    found = dict(stage.embed.state_dict(prefix=src.embedding_prefix))
    if stage.project is not None:
        found.update(stage.project.state_dict(prefix="embeddings_project."))
    return found


def head_tensors(src: ModelSource) -> dict[str, torch.Tensor]:
    """BART: decoder and LM head (shared embedding included); BERT: nothing (pooling has no weights)."""
    if src.family != "bart":
        return {}
    return {k: v for k, v in build_generator(src).state_dict().items() if not k.startswith("model.encoder.")}
