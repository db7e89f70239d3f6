"""What a pretraining run ships: the backbone, the vision tower and the conformer (``SHIPPED``), written
to ``model.safetensors`` after every phase; projectors, LoRAs and throw-away heads are left out."""
from __future__ import annotations

import re
from pathlib import Path

from safetensors.torch import save_file

SHIPPED = re.compile(r"^(language_model\.(?!.*\.lora_[AB]\.)|lm_head\.|image_embed\.img_processor\.|audio_embed\.encoder\.)")


def save_parts(model, out: Path, seed: int, processor=None) -> dict:
    """Write the shipped parts (backbone, vision tower, conformer) to ``out/model.safetensors``;
    with ``processor`` also the whole model as it stands (temporary projectors and LoRAs included)
    to ``out/full/``, a checkpoint ``from_pretrained`` loads (for evaluating a phase's end state)."""
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items() if SHIPPED.match(k)}
    save_file(sd, str(out / "model.safetensors"), metadata={"preset": "tiny", "seed": str(seed)})
    if processor is not None:
        model.save_pretrained(out / "full")
        processor.save_pretrained(out / "full")
    return sd
