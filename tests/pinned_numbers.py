"""Pinned numbers of the shipped tiny model, and the one command that writes them again:

    .venv/bin/python tests/pinned_numbers.py

- ``tests/data/pinned_losses.json``: for each stage of the table, the 10 training losses of its tiny
  recipe (``tiny-<stage>``: the shipped tiny weights, seed 0, ``max_steps=10``, micro-batches of 2, the
  recipe's learning rate times ``LR_SCALE``) on
  the test corpus of its row kind (tests/datafactory.py, drawn and synthesised alike on every machine);
- ``tests/data/pinned_logits.json``: ``MoLoRAModel.from_pretrained("tiny")``'s logits for one text,
  one image and one audio prompt: their shape, their sum and the sum of their magnitudes, and a slice
  (the last position's first 16 vocabulary entries).

tests/test_pinned_numbers.py recomputes both with the functions below and compares. Run the command
after a deliberate change of what these numbers measure (new shipped weights, a changed loss or
forward) and commit the files with it; each records the digest of the weights it was made with.
"""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
LOSSES_FILE = DATA / "pinned_losses.json"
LOGITS_FILE = DATA / "pinned_logits.json"
COMMAND = ".venv/bin/python tests/pinned_numbers.py"
STEPS = 10
SEED = 0
MICRO_BATCH = 2  # of the 8 rows of each corpus: the sampler's order is pinned too, and the run stays short
# the row kind each stage trains on in its pinned run (tests/datafactory.py corpus kinds)
STAGE_CORPUS = {"vision": "vqa", "speech": "asr", "joint": "joint", "sft": "mixed", "dpo": "preference"}
SLICE = 16
# the pinned runs train at 1/100 of the recipe's lr: at the recipe's own rate Adam's sign-like first updates
# of weights with rounding-level gradients carry runs on different CPUs apart by percents within 10 steps
# (see tests/test_pinned_numbers.py), at 1/100 they agree to float32 rounding
LR_SCALE = 0.01


def weights_digest() -> str:
    """sha256 of the shipped tiny weights the numbers come from."""
    from molora.checkpoint import preset_weights

    return hashlib.sha256(Path(preset_weights("tiny")).read_bytes()).hexdigest()[:16]


def stage_losses(stage: str, work: Path) -> list[float]:
    """The ``STEPS`` training losses of the ``tiny-<stage>`` recipe, seed ``SEED``, on its corpus."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from datafactory import corpus

    from molora.stages.metrics_log import read_rows
    from molora.stages.recipe import load_recipe
    from molora.stages.trainer import train

    data = corpus(work / "data", STAGE_CORPUS[stage])
    lr = load_recipe(f"tiny-{stage}", {}).training.lr * LR_SCALE
    recipe = load_recipe(f"tiny-{stage}", {"data.train": str(data), "max_steps": STEPS, "seed": SEED,
                                           "training.micro_batch_size": MICRO_BATCH, "training.lr": lr})
    assert recipe.stage == stage, recipe.stage
    train(recipe, work / "out", progress=False)
    return [float(row["loss"]) for row in read_rows(work / "out" / "metrics.jsonl") if "loss" in row]


def prompts() -> dict[str, list[dict]]:
    from molora.synthetic.media import drawn_image, synth_audio

    # the image is one crop's size (56 x 56 for tiny), so the HD transform resizes nothing: a resize rounds to
    # 8-bit pixels, and another kernel set (SSE4.2 vs AVX-512) lands some ties on the other side, a whole
    # level (0.009 of the normalised range) that moved logits by 4e-4 of their scale: the processor's rounding,
    # not the model's, and tests/test_image_transform.py checks it against transformers' own processor
    return {
        "text": [{"role": "user", "content": "What colour is the sky on a clear day?"}],
        "image": [{"role": "user", "content": [{"type": "image", "image": drawn_image(56, 56, seed=1)},
                                               {"type": "text", "text": "What number is written here?"}]}],
        "audio": [{"role": "user", "content": [{"type": "audio", "audio": (synth_audio(1.0, seed=2), 16000)},
                                               {"type": "text", "text": "Transcribe the audio clip into text."}]}],
    }


@torch.no_grad()
def tiny_logits() -> dict[str, torch.Tensor]:
    """``from_pretrained("tiny")``'s float32 logits [1, T, V] for each of ``prompts()``."""
    from molora import MoLoRAModel, MoLoRAProcessor

    model = MoLoRAModel.from_pretrained("tiny").eval()
    processor = MoLoRAProcessor.from_pretrained("tiny")
    return {name: model(**processor(conv)).logits.float() for name, conv in prompts().items()}


def logits_record(logits: torch.Tensor) -> dict:
    return {"shape": list(logits.shape), "sum": float(logits.double().sum()),
            "abs_sum": float(logits.double().abs().sum()), "last_position": logits[0, -1, :SLICE].tolist()}


def main() -> int:
    import molora.stages.table as table

    missing = sorted(set(table.STAGES) - set(STAGE_CORPUS))
    if missing:
        raise SystemExit(f"give the stage(s) {missing} a corpus kind in STAGE_CORPUS ({__file__})")
    meta = {"command": COMMAND, "weights_sha256": weights_digest(), "torch": torch.__version__}
    losses = {}
    for stage in table.STAGES:
        with tempfile.TemporaryDirectory() as tmp:
            losses[stage] = stage_losses(stage, Path(tmp))
        print(f"{stage}: {[round(x, 4) for x in losses[stage]]}")
    logits = {name: logits_record(x) for name, x in tiny_logits().items()}
    DATA.mkdir(exist_ok=True)
    LOSSES_FILE.write_text(json.dumps({**meta, "steps": STEPS, "seed": SEED, "lr_scale": LR_SCALE, "losses": losses},
                                      indent=1) + "\n")
    LOGITS_FILE.write_text(json.dumps({**meta, "logits": logits}, indent=1) + "\n")
    print(f"wrote {LOSSES_FILE} and {LOGITS_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
