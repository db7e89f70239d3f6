"""The audio modality: log-mel (``encoders/audio_features.py``) -> conformer -> the audio projector
the row's route names (``speech`` for speech rows, ``vision`` for image+speech rows in the reference
table; ``audio_embed.py``), placeholder ``<|audio_N|>``."""
from __future__ import annotations

import math
import os
import re

from ..errors import AudioError
from .base import EmbedContext, Modality, register_modality

# length estimates (manifests' length grouping): rough Phi-4-multimodal numbers
AUDIO_TOKENS_PER_SECOND = 12.5  # 10 ms frames, time reduction 8
AUDIO_TOKENS_UNKNOWN = 125  # ~10 s when the clip's duration is not known


class AudioModality(Modality):
    name = content_type = "audio"
    input_type = "speech"
    module_name = "audio_embed"
    input_keys = ("audio_input_features", "audio_embed_sizes", "audio_attention_mask")
    count_key = "audio_embed_sizes"
    hint = "path, array, (array, sampling_rate) or {'array', 'sampling_rate'}"
    call_options = ("sampling_rate",)
    media_error = AudioError
    noun = "audio clips"
    chat_limit = 16
    unknown_tokens = AUDIO_TOKENS_UNKNOWN

    def token_id(self, config) -> int:
        return config.backbone.audio_token_id

    def components(self) -> dict[str, str]:
        # a config's further audio projectors are ``<name>_audio_projector`` (stages/freeze.py)
        return {"audio_encoder": r"audio_embed\.encoder\.",
                "speech_projector": r"audio_embed\.audio_projection\.speech\.",
                "vision_speech_projector": r"audio_embed\.audio_projection\.vision\."}

    def component_of(self, name: str) -> str | None:
        m = re.match(r"audio_embed\.audio_projection\.([^.]+)\.", name)
        return super().component_of(name) or (f"{m.group(1)}_audio_projector" if m else None)

    def build(self, config):
        from .audio_embed import AudioEmbedder

        return AudioEmbedder(config)

    def present(self, inputs: dict) -> bool:
        return super().present(inputs) or inputs.get("audio_embed_sizes") is not None

    def embed(self, module, inputs, ctx: EmbedContext, device, dtype):
        from ..errors import PlaceholderError

        features, sizes, mask = (inputs.get(k) for k in self.input_keys)
        if features is None or sizes is None:
            raise PlaceholderError("the prompt has audio placeholder tokens but no audio was given", "audio")
        counts = sizes.tolist()
        rows = ctx.item_rows(counts)
        if not rows and counts:
            n = int((ctx.input_ids == ctx.token_id).sum())
            raise PlaceholderError(f"the prompt has {n} audio placeholder tokens but audio_embed_sizes sum to "
                                   f"{sum(counts)} ({len(counts)} clip(s))", "audio")
        projectors = [ctx.router.audio_projector(ctx.row_types[r]) for r in rows]
        return module(features.to(device, dtype), sizes, mask, projectors)

    def set_activation_checkpointing(self, module, enabled: bool) -> None:
        module.encoder.gradient_checkpointing = enabled  # the conformer's blocks

    def load(self, value, config, item: str):
        from ..data.hf_datasets import decode_audio_value

        return decode_audio_value(value, item)  # a path: encoders.audio_features.load_audio

    def estimate_tokens(self, value, probe: bool, duration: float | None = None) -> int:
        if duration is not None:
            return int(math.ceil(duration * AUDIO_TOKENS_PER_SECOND))
        if isinstance(value, tuple) and len(value) == 2:
            try:
                return int(math.ceil(len(value[0]) / float(value[1]) * AUDIO_TOKENS_PER_SECOND))
            except (TypeError, ValueError, ZeroDivisionError):
                return self.unknown_tokens
        if probe and isinstance(value, (str, os.PathLike)):
            try:
                import soundfile as sf

                return int(math.ceil(sf.info(str(value)).duration * AUDIO_TOKENS_PER_SECOND))  # header only
            except Exception:  # noqa: BLE001 - missing/corrupt: the collator reports it
                return self.unknown_tokens
        return self.unknown_tokens

    def processor(self, config):
        from ..encoders.audio_features import AudioFeatureExtractor

        return AudioFeatureExtractor(config.audio)

    def token_count(self, part, item) -> int:
        from ..encoders.audio_features import audio_token_count

        samples, rate = item
        n = max(getattr(samples, "shape", (len(samples),))) if getattr(samples, "ndim", 1) > 1 else len(samples)
        return audio_token_count(n, rate, part.time_reduction, part.downsample_rate)

    def as_items(self, value) -> list:
        from ..encoders.audio_features import as_clip_list

        return as_clip_list(value)


AUDIO = register_modality(AudioModality())
