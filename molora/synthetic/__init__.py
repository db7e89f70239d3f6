"""Deterministic synthetic media for the embedded default: speech (espeak-ng), drawn images."""
