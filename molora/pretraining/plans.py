"""The step, batch and row counts of a pretraining run: ``FULL`` (the shipped recipe's defaults) and
``SMOKE`` (a few steps of every phase, for the tests); ``--scale`` / ``--set`` change them."""
from __future__ import annotations

FULL = {"lm_steps": 600, "lm_batch": 48, "ctc_steps": 2500, "ctc_batch": 32, "speech_steps": 2000,
        "speech_batch": 16, "vision_steps": 2500, "vision_batch": 16, "mixed_steps": 1500, "mixed_batch": 16,
        "ocr_steps": 6000, "ocr_batch": 16, "read_pages": 3000,
        "crops_steps": 3000, "crops_batch": 32, "crops_rows": 20000,
        "lookup_steps": 4000, "lookup_batch": 32, "lookup_rows": 60000, "mixed_lookup_rows": 3000,
        "keep_drills": 0, "keep_speech": 0, "regions_steps": 2000, "regions_batch": 32, "regions_rows": 20000,
        "everyday_text": 100000}  # everyday sentences added to the text phases (--corpus everyday)
SMOKE = {"lm_steps": 3, "lm_batch": 4, "ctc_steps": 3, "ctc_batch": 4, "speech_steps": 2, "speech_batch": 4,
         "vision_steps": 2, "vision_batch": 4, "mixed_steps": 2, "mixed_batch": 4, "ocr_steps": 3, "ocr_batch": 2,
         "read_pages": 4, "crops_steps": 2, "crops_batch": 2, "crops_rows": 8,
         "lookup_steps": 2, "lookup_batch": 4, "lookup_rows": 12, "mixed_lookup_rows": 6,
         "keep_drills": 0, "keep_speech": 0, "regions_steps": 2, "regions_batch": 2, "regions_rows": 6,
         "everyday_text": 40}
