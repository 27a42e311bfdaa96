"""The whole model in one process: the reference every split is checked and timed against.

It is transformers' own full model (BertModel-style base model, or BartForConditionalGeneration)
filled with the same weights as the halves, and pruned layer by layer exactly as the halves would be
at split point k (blocks before k at rho_d, everything after at rho_s).
"""
from __future__ import annotations

import re

import torch
from torch import nn

from coinfer.models import ModelSource
from coinfer.pruning import Pruner
from coinfer.split import GenerationOptions, pool

_BLOCK_INDEX = re.compile(r"encoder\.layers?\.(\d+)\.")


class WholeModel:
    def __init__(self, src: ModelSource):
        from transformers import AutoModel, BartForConditionalGeneration

        self.src = src
        src.skeleton  # noqa: B018 - settles the config's attention implementation first
        if src.family == "bart":
            self.model = BartForConditionalGeneration(src.config)
            if src.folder is not None and (src.folder / "generation_config.json").exists():
                from transformers import GenerationConfig

                self.model.generation_config = GenerationConfig.from_pretrained(str(src.folder),
                                                                                local_files_only=True)
        else:
            self.model = AutoModel.from_config(src.config, add_pooling_layer=False) \
                if src.config.model_type in ("bert", "roberta", "xlm-roberta") else AutoModel.from_config(src.config)
        src.load_into(self.model)
        self._pruners: dict[str, Pruner] = {}
        self._pruned_split: int | None = None

    def prune(self, k: int, rho_device: float, rho_server: float, method: str = "magnitude") -> None:
        """Prune as a split at k would: encoder blocks < k to rho_device, all other linears to rho_server."""
        if self._pruned_split != k:
            halves: dict[str, dict[str, nn.Linear]] = {"device": {}, "server": {}}
            for name, module in self.model.named_modules():
                if not isinstance(module, nn.Linear) or name == "lm_head" or name.startswith("pooler"):
                    continue
                match = _BLOCK_INDEX.search(name)
                on_device = match is not None and "decoder" not in name and int(match.group(1)) < k
                halves["device" if on_device else "server"][name] = module
            for pruner in self._pruners.values():  # back to dense before regrouping layers
                pruner.apply(1.0)
            self._pruners = {half: Pruner(layers, seed=self.src.seed, head_dim=self.src.head_dim) for half, layers in halves.items()}
            self._pruned_split = k
        self._pruners["device"].apply(rho_device, method)
        self._pruners["server"].apply(rho_server, method)

    @torch.inference_mode()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 generation: GenerationOptions = GenerationOptions()) -> torch.Tensor:
        if self.src.family == "bart":
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                       **generation.kwargs())
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden, attention_mask, self.src.pooling.mode, self.src.pooling.normalize)
