"""Input modalities as entries (``base.py``): image and audio, the two Phi-4-multimodal has."""
from .audio import AUDIO, AudioModality
from .base import MODALITIES, EmbedContext, Modality, modality, register_modality
from .image import IMAGE, ImageModality

__all__ = ["MODALITIES", "Modality", "EmbedContext", "modality", "register_modality", "ImageModality",
           "AudioModality", "IMAGE", "AUDIO"]
