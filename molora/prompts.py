"""The prompts molora trains and evaluates with, in one place.

``ASR_PROMPT`` is what an audio row without its own prompt asks (manifests, hub datasets, the chat
REPL's clip sent with no words, the Open ASR runners); ``EARNINGS22_PROMPT`` the classic evaluation
scripts' Earnings-22 prompt. ``VQA_SUFFIX`` follows a document question in training rows and in the
DocVQA runner (the common harnesses' prompt); ``CHARTQA_SUFFIX`` follows a ChartQA question.
"""
from __future__ import annotations

__all__ = ["ASR_PROMPT", "EARNINGS22_PROMPT", "VQA_SUFFIX", "CHARTQA_SUFFIX"]

ASR_PROMPT = "Transcribe the audio clip into text."
EARNINGS22_PROMPT = "Transcribe the audio clip to English text."
VQA_SUFFIX = "\nAnswer the question using a single word or phrase."
CHARTQA_SUFFIX = "\nAnswer the question with a single word."
