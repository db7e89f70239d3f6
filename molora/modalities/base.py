"""A modality entry: everything the model, the processor, the router and the freeze plans need to
know about one kind of input, in one place.

An entry names its message content type (``{"type": "image", "image": ...}``), its placeholder
(``<|image_N|>`` expanded to one placeholder id per feature token), the forward keywords of its
tensors, the model attribute holding its encoder + projector(s) (also the state-dict prefix), its
input-type name for the router, the freeze-plan components of its parameters, and what the data
path needs: how a manifest's path or a data set's value becomes an item (``load``), a cheap length
estimate (``estimate_tokens``), its per-conversation limit in ``Chat`` and what activation
checkpointing recomputes. Manifests, the collator, the trainer's losses, the freeze plans, ``Chat``
and the model read these entries (the config's, ``MoLoRAConfig.modality_entries()``). Image and audio
are the two entries Phi-4-multimodal has (``image.py``, ``audio.py``); a new modality is one more
entry registered with ``register_modality`` and named in ``MoLoRAConfig.modalities``, with routes
for the input types it creates.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, MediaError

__all__ = ["Modality", "EmbedContext", "register_modality", "modality", "MODALITIES"]


@dataclass
class EmbedContext:
    """What an entry's ``embed`` may need to know about the call: the tokens, each row's input type,
    and the router (e.g. the audio entry picks each clip's projector from its row's route)."""

    input_ids: torch.Tensor  # [B, T] or packed [1, N]
    row_types: list[str]
    router: Any
    token_id: int
    cu_seqlens: torch.Tensor | None = None

    def item_rows(self, counts: list[int]) -> list[int]:
        """The batch row of each item, given each item's number of placeholder tokens (items in
        order of appearance)."""
        slots = (self.input_ids == self.token_id).nonzero()
        if slots.shape[0] != sum(counts):
            return []
        starts = torch.tensor([sum(counts[:i]) for i in range(len(counts))], dtype=torch.long, device=slots.device)
        first = slots[starts]
        if self.cu_seqlens is None:
            return first[:, 0].tolist()
        return (torch.searchsorted(self.cu_seqlens.to(first.device), first[:, 1].contiguous(), right=True) - 1).tolist()


class Modality:
    name: str = ""  # registry key and placeholder name: <|{name}_N|>
    content_type: str = ""  # message content part type
    input_type: str = ""  # the router's name for rows that hold this modality
    module_name: str = ""  # the model attribute (and state-dict prefix) of the embedder
    input_keys: tuple[str, ...] = ()  # forward keywords of the processed tensors
    count_key: str = ""  # the processor output that gives each item's number of feature tokens
    hint: str = ""  # how the processor accepts one item (for error messages)
    call_options: tuple[str, ...] = ()  # processor keywords passed on to this entry's part (dynamic_hd=, ...)
    media_error: type[MediaError] = MediaError  # what a bad item raises (ImageError, AudioError, ...)
    noun: str = ""  # the items in messages ("images", "audio clips"); default "<name> items"
    chat_limit: int = 16  # most items per conversation in Chat (``Chat(max_items={name: n})``)
    unknown_tokens: int = 256  # length estimate of an item whose size is not known without decoding it

    # -- config ---------------------------------------------------------------------------
    def token_id(self, config) -> int:
        raise NotImplementedError

    def components(self) -> dict[str, str]:
        """Freeze-plan component name -> regex over parameter names."""
        raise NotImplementedError

    def component_of(self, name: str) -> str | None:
        """The freeze-plan component of parameter ``name``, if it is one of this entry's."""
        return next((c for c, pattern in self.components().items() if re.match(pattern, name)), None)

    def unused_parameters(self, names: list[str], config) -> set[str]:
        """Those of ``names`` (the model's parameters) that the forward never reaches."""
        return set()

    # -- model ----------------------------------------------------------------------------
    def build(self, config) -> nn.Module:
        raise NotImplementedError

    def present(self, inputs: dict) -> bool:
        first = inputs.get(self.input_keys[0])
        return first is not None and (not torch.is_tensor(first) or first.numel() > 0)

    def embed(self, module: nn.Module, inputs: dict, ctx: EmbedContext, device, dtype) -> list[torch.Tensor]:
        """One ``[tokens_i, hidden]`` tensor per item, in order of appearance."""
        raise NotImplementedError

    def set_activation_checkpointing(self, module: nn.Module, enabled: bool) -> None:
        """Recompute this entry's encoder in backward instead of storing its activations (where it can)."""

    # -- data: manifests, collation, chat --------------------------------------------------
    @property
    def items(self) -> str:
        return self.noun or f"{self.name} items"

    def load(self, value, config, item: str):
        """One item as the processor takes it, from a manifest's (absolute) path or a data set's
        in-memory value; a bad item raises ``media_error`` naming ``item``."""
        raise NotImplementedError(f"the {self.name} modality does not say how to load an item ({type(self).__name__}"
                                  ".load), so manifests and data sets cannot hold it")

    def estimate_tokens(self, value, probe: bool, duration: float | None = None) -> int:
        """A cheap estimate of the item's feature tokens, for length grouping: ``value`` is a path or
        a loaded item, ``probe`` allows reading a file's header (never decoding it), ``duration`` is
        the item's length in seconds when the manifest row states one."""
        return self.unknown_tokens

    # -- processor ------------------------------------------------------------------------
    def processor(self, config):
        """The callable that turns a list of items into the tensors of ``input_keys`` (plus
        ``count_key``); exposed as ``MoLoRAProcessor.<name>_processor``."""
        raise NotImplementedError

    def as_items(self, value) -> list:
        """A flat list of items from what a user passes as ``<name>s=`` (a batch object or a list)."""
        return list(value) if isinstance(value, (list, tuple)) else [value]

    def token_count(self, part, item) -> int:
        """Feature tokens of one loaded item, without computing its features (the length guard)."""
        return self.process(part, [item])[1][0]

    def process(self, part, items: list, **kw) -> tuple[dict, list[int]]:
        """(tensors of ``input_keys``, feature tokens per item) for a flat list of items; of the
        keywords, those in ``call_options`` that are not None go to the part."""
        out = part(items, **{k: v for k, v in kw.items() if k in self.call_options and v is not None})
        counts = [int(n) for n in out[self.count_key]]
        return {k: out[k] for k in self.input_keys if out.get(k) is not None}, counts


MODALITIES: dict[str, Modality] = {}


def register_modality(entry: Modality) -> Modality:
    MODALITIES[entry.name] = entry
    return entry


def modality(name: str) -> Modality:
    if name not in MODALITIES:
        raise ConfigError(f"unknown modality {name!r}; registered: {sorted(MODALITIES)}", "modalities")
    return MODALITIES[name]
