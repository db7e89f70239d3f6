"""Collation: Samples -> a right-padded training batch, skipping (and reporting) bad media.

``Collator(processor)(samples)`` loads every sample's media parts with the entry of the processor's
modality whose content type the part has (``Modality.load``: paths -> ``load_image`` / ``load_audio``
/ ...; in-memory values are checked and decoded), drops the samples whose media is missing,
corrupt or refused by the processor's own checks (any ``MediaError``) and the rows longer than
``max_tokens`` (default: the model's context; counted before any tensor is built, see
``length_guard``), records each drop in
``collator.skipped`` (``{"source", "item", "reason"}``) and returns
``processor(conversations, return_labels=True)`` for the rest, plus ``"num_label_tokens"``
(``molora.loss.count_label_tokens``) so that the trainer can normalise the loss across
processes. ``None`` when every sample was skipped. ``strict=True`` raises instead.
Only media problems and over-long rows are skipped; any other error propagates.

Optional SpecAugment masks ``audio_input_features`` within each clip's valid frames (torchaudio's
frequency / time masking, the same draws). With ``augment_seed`` each row draws from its own
generator seeded by ``augment_seed`` and the row's ``source``, so a row's masks do not depend on
which process, micro-batch or thread collates it (the trainer passes one seed per step); without
it, from torch's global RNG.

With ``pack=True`` (the trainer's LM stages, ``training.packing``) the batch is packed: the rows,
sorted by the adapter their input type routes to (a stable sort: text rows first, then each
adapter's rows), are concatenated without padding (``molora.packing.pack_batch``: ``input_ids`` /
``labels`` / ``position_ids`` ``[1, N]`` and ``cu_seqlens``), which ``MoLoRAModel`` takes on every
device; the same loss and gradients as the padded batch.
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import replace
from pathlib import Path

import torch

from molora.errors import ConfigError, LengthError, MediaError, MoLoRAError
from molora.loss import count_label_tokens

from .length_guard import RowLength
from molora.data.manifest import Sample
from .typed_fields import check_keys, coerce

__all__ = ["Collator"]

_SPEC_KEYS = {"freq_mask_param", "time_mask_param", "num_freq_masks", "num_time_masks"}


class Collator:
    """Batch builder for the staged trainers (see the module docstring).

    ``skipped`` / ``num_skipped`` accumulate over the collator's life in the process that calls
    it (with a multi-worker DataLoader each worker has its own copy).
    """

    def __init__(self, processor, *, strict: bool = False, spec_augment: dict | None = None,
                 max_tokens: int | None = None, pack: bool = False):
        self.processor = processor
        self.strict = strict
        self.pack = pack
        self.length = RowLength(processor, max_tokens) if processor.tokenizer is not None else None
        self.skipped: list[dict[str, str]] = []
        self.spec_augment = self.check_spec(spec_augment)
        # content type -> the processor's modality entry (its config's: molora/modalities)
        self.entries = {m.content_type: m for m in processor.modalities.values()}

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    @staticmethod
    def check_spec(spec: dict | None) -> dict | None:
        """SpecAugment settings with their defaults filled in; unknown keys or bad values raise
        ConfigError naming ``training.spec_augment.KEY``."""
        if not spec:
            return None
        check_keys(spec, _SPEC_KEYS, "training.spec_augment")
        out = {"freq_mask_param": 27, "time_mask_param": 100, "num_freq_masks": 2, "num_time_masks": 2, **spec}
        for k, v in out.items():
            v = coerce(v, int, f"training.spec_augment.{k}")
            if v < 0:
                raise ConfigError(f"must be a non-negative integer, got {v!r}", f"training.spec_augment.{k}")
            out[k] = v
        return out

    # -- media ---------------------------------------------------------------------------
    def load_media(self, sample: Sample) -> Sample:
        """A copy of ``sample`` whose media parts hold loaded values (RGB PIL images, (array, sr), ...).
        Raises the ``MediaError`` of the first bad item."""
        messages = []
        for i, msg in enumerate(sample.messages):
            content = msg.get("content")
            if not isinstance(content, list):
                messages.append(msg)
                continue
            parts = []
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind in self.entries:
                    value = next((part[k] for k in (kind, "path", "url") if k in part), None)
                    item = str(value) if isinstance(value, (str, Path)) else f"messages[{i}].content[{j}]"
                    part = {"type": kind, kind: self.entries[kind].load(value, self.processor.config, item)}
                parts.append(part)
            messages.append({**msg, "content": parts})
        return replace(sample, messages=messages)

    def _skip_or_raise(self, sample: Sample, err: MediaError | LengthError) -> None:
        if self.strict:
            raise type(err)(err.reason, f"{sample.source} ({err.item})" if err.item else sample.source) from err
        entry = {"source": sample.source, "item": str(err.item or ""), "reason": err.reason}
        if entry not in self.skipped:  # a bad sample met again in a later epoch is listed once
            self.skipped.append(entry)

    def _loaded(self, samples: list[Sample], kinds: tuple[str, ...]) -> list[Sample]:
        out = []
        for s in samples:
            if s.kind not in kinds:
                other = "collate_preference" if s.kind == "preference" else "Collator.__call__"
                raise MoLoRAError(f"a {s.kind!r} sample cannot be collated here (use {other})", s.source)
            try:
                if self.length is not None:
                    self.length.check(s, loaded=False)  # a huge text is refused before it is tokenised
                loaded = self.load_media(s)
                if self.length is not None:
                    self.length.check(loaded, loaded=True)
                out.append(loaded)
            except (MediaError, LengthError) as e:
                self._skip_or_raise(s, e)
        return out

    def _process(self, samples: list[Sample], build) -> tuple[list[Sample], list[dict]]:
        """Run the processor on the samples' conversations; on a MediaError find the culprit(s)
        one sample at a time, skip them, and process the rest."""
        try:
            return samples, [build(samples)]
        except MediaError:
            pass
        good = []
        for s in samples:
            try:
                build([s])
                good.append(s)
            except MediaError as e:
                self._skip_or_raise(s, e)
        return good, ([build(good)] if good else [])

    def _batch(self, convs: list[list[dict]]) -> dict:
        batch = self.processor(convs, return_labels=True)
        batch["num_label_tokens"] = count_label_tokens(batch["labels"])
        return batch

    # -- entry points ---------------------------------------------------------------------
    def __call__(self, samples: list[Sample], *, augment_seed: int | None = None) -> dict | None:
        loaded = self._loaded(list(samples), ("asr", "chat", "vqa"))
        if not loaded:
            return None
        if self.pack:  # each adapter's rows together: contiguous spans for the routed linears
            loaded = sorted(loaded, key=self._adapter_rank)
        good, out = self._process(loaded, lambda ss: self._batch([s.messages for s in ss]))
        if not good:
            return None
        batch = out[0]
        self._spec_augment(batch, _row_generators(augment_seed, good))
        if self.pack:
            from molora.packing import pack_batch

            num = batch.pop("num_label_tokens")
            batch = pack_batch(batch)
            batch["num_label_tokens"] = num
        return batch

    def _adapter_rank(self, sample: Sample) -> int:
        """Index of the adapter the sample's input type routes to (-1: none), from its content types."""
        config = self.processor.config
        kinds = {p.get("type") for p in _content_parts(sample)}
        names = [m.input_type for m in config.modality_entries() if m.content_type in kinds]
        route = config.router.get("+".join(names) or "text")
        adapter = None if route is None else route.adapter
        return -1 if adapter is None else config.adapter_names.index(adapter)

    def collate_preference(self, samples: list[Sample], *, augment_seed: int | None = None) -> dict | None:
        """``{"chosen": batch, "rejected": batch}``: the same prompts with the chosen / rejected reply
        as the assistant turn (labels only on the reply). Same skip rules; None if all skipped."""
        loaded = self._loaded(list(samples), ("preference",))
        if not loaded:
            return None

        def build(ss: list[Sample]) -> dict:
            def convs(attr: str):
                return [copy.copy(s.messages) + [{"role": "assistant", "content": getattr(s, attr)}] for s in ss]
            return {"chosen": self._batch(convs("chosen")), "rejected": self._batch(convs("rejected"))}

        good, out = self._process(loaded, build)
        if not good:
            return None
        pair = out[0]
        if self.spec_augment and "audio_input_features" in pair["chosen"]:
            # one mask draw, shared: both replies see the same audio
            self._spec_augment(pair["chosen"], _row_generators(augment_seed, good))
            pair["rejected"]["audio_input_features"].copy_(pair["chosen"]["audio_input_features"])
        return pair

    # -- SpecAugment ----------------------------------------------------------------------
    def _spec_augment(self, batch: dict, generators: list | None = None) -> None:
        """Mask each clip's valid frames in place: ``num_freq_masks`` bands of mel bins, then
        ``num_time_masks`` bands of frames. Row i draws from ``generators[i]`` (None: the global RNG)."""
        spec = self.spec_augment
        feats = batch.get("audio_input_features")
        if not spec or feats is None:
            return
        mask = batch.get("audio_attention_mask")
        frames = mask.sum(-1).tolist() if mask is not None else [feats.shape[1]] * feats.shape[0]
        # the features' rows are the clips in batch order (rows without audio have none)
        if generators is not None and len(generators) != len(frames):
            raise MoLoRAError(f"{len(generators)} clip generators for {len(frames)} feature rows", "spec_augment")
        gens = [None] * len(frames) if generators is None else generators
        freq_param = min(spec["freq_mask_param"], feats.shape[-1])
        for i, n in enumerate(int(f) for f in frames):
            if n <= 0:
                continue
            x = feats[i, :n]  # [frames, n_mels]
            for _ in range(spec["num_freq_masks"]):
                mask_band_(x, freq_param, 1, gens[i])
            for _ in range(spec["num_time_masks"]):
                mask_band_(x, min(spec["time_mask_param"], n), 0, gens[i])


def mask_band_(x: torch.Tensor, mask_param: int, dim: int, generator: torch.Generator | None = None) -> None:
    """Zero one band ``[start, start + width)`` of ``x`` along ``dim``, in place, drawn as
    ``torchaudio.functional.mask_along_axis`` draws it (p = 1): width ~ U(0, mask_param), start ~
    U(0, size - width), both truncated; from ``generator`` (None: torch's global RNG, torchaudio's draws)."""
    if mask_param < 1:
        return
    width = torch.rand(1, generator=generator) * mask_param
    start = torch.rand(1, generator=generator) * (x.shape[dim] - width)
    lo, n = int(start.long()), int(width.long())
    if n > 0:
        x.narrow(dim, lo, n).zero_()


def _row_generators(seed: int | None, rows: list[Sample]) -> list[torch.Generator] | None:
    """One generator per audio clip, in the order of the batch's feature rows (row by row, clips in
    conversation order), seeded by ``seed``, the row's source and the clip's place (None without a seed)."""
    if seed is None:
        return None
    gens = []
    for s in rows:
        clips = sum(p.get("type") == "audio" for p in _content_parts(s))
        for k in range(clips):
            digest = hashlib.blake2b(f"{seed}:{s.source}:{k}".encode(), digest_size=8).digest()
            gens.append(torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1))
    return gens


def _content_parts(sample: Sample):
    """The typed parts (``{"type": ...}`` dicts) of a sample's messages, in conversation order."""
    for m in sample.messages:
        if isinstance(m.get("content"), list):
            yield from (p for p in m["content"] if isinstance(p, dict))
