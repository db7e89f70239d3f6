"""Stage name -> the module that holds what is specific to it."""
from __future__ import annotations

import importlib


def get(stage: str):
    return importlib.import_module(f"molora.stages.stage_{stage}")
