"""Pretraining the tiny preset's parts (backbone, vision tower, conformer) on the synthetic corpora, as
the real model's parts are pretrained before molora's stages run. ``scripts/pretrain_tiny.py`` is the
command line; the phases run on the stages' optimiser, schedule, freeze plans, collator and losses
through one loop (``loop.py``). What each phase measured: ``docs/tiny-pretraining.md``."""
from __future__ import annotations

from .ctc import audio_features, ctc_wer, ctc_words, pad_features, pretrain_ctc, set_cmvn
from .loop import BETAS, log, run_phase, settings, train_only
from .ocr import ocr_batch, ocr_pages, pretrain_ocr
from .plans import FULL, SMOKE
from .reading import READ_PROMPTS, answer_band, reading_crops, reading_samples, region_rows
from .rows import alongside, drill_rows, image_row, text_conversations
from .saving import SHIPPED, save_parts
from .text_lm import pretrain_text
from .through_lm import lm_phase_lrs, through_lm
from .tower import rescale_tower

__all__ = ["FULL", "SMOKE", "SHIPPED", "BETAS", "READ_PROMPTS", "alongside", "answer_band", "audio_features",
           "ctc_wer", "ctc_words", "drill_rows", "image_row", "lm_phase_lrs", "log", "ocr_batch", "ocr_pages",
           "pad_features", "pretrain_ctc", "pretrain_ocr", "pretrain_text", "reading_crops", "reading_samples",
           "region_rows", "rescale_tower", "run_phase", "save_parts", "set_cmvn", "settings", "text_conversations",
           "through_lm", "train_only"]
