"""Errors molora raises for bad input.

Every error names the item it is about (a file, a sample index, a message part) and the
reason, so a user can find and fix the input without reading a traceback.
"""
from __future__ import annotations


class MoLoRAError(ValueError):
    """Base class of every error molora raises about its input."""

    def __init__(self, reason: str, item: str | None = None):
        self.item = item
        self.reason = reason
        super().__init__(f"{item}: {reason}" if item else reason)

    def __reduce__(self):  # pickled whole (reason and item apart): collation workers send errors back
        return type(self), (self.reason, self.item), self.__dict__


class ConfigError(MoLoRAError):
    """A configuration value is missing, inconsistent or of the wrong type."""


class MediaError(MoLoRAError):
    """An image or audio input cannot be used (unreadable, corrupt, out of limits)."""


class ImageError(MediaError):
    """An image cannot be used: unreadable, corrupt, unsupported mode, too many pixels."""


class AudioError(MediaError):
    """An audio clip cannot be used: unreadable, empty, non-finite, too long, bad rate."""


class PlaceholderError(MoLoRAError):
    """The `<|image_N|>` / `<|audio_N|>` placeholders do not match the media given."""


class CheckpointError(MoLoRAError):
    """A checkpoint directory cannot be read: unknown layout, missing or unexpected keys."""


class ArgumentError(MoLoRAError):
    """A call or command-line argument is out of range or of the wrong kind (sampling settings,
    messages that are not a conversation, ...)."""


class LengthError(MoLoRAError):
    """A row or prompt is longer than a token limit (``data.max_tokens``, the model's context)."""


class RunError(MoLoRAError):
    """A training run's output folder conflicts with the command: an existing run without
    ``--resume`` / ``--overwrite``, a resume whose recipe, data or model differ from the checkpoint's."""
