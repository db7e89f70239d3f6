"""Batched greedy generation over evaluation items, timed as the Open ASR leaderboard times it.

``run_items`` is the one loop every runner uses: skip items already in the result file
(resume), cut the rest into batches, decode each batch's media *outside* the timer, then time
processor (feature extraction + tokenisation) + ``model.generate`` + ``batch_decode``, and
append one result row per item (flushed per batch). One warm-up batch (the first batch still
to do) runs untimed before the first timed batch. Items whose media cannot be used are skipped
and listed (``molora.eval.skips``), never the end of the run unless it is strict.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

from .data import Item
from .report import ResultFile
from .skips import SkipList

__all__ = ["Generator", "run_items", "resolve_device", "resolve_dtype", "load_model_and_processor", "conversation",
           "quantization_setting"]


def resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str | None, device: str):
    """``auto`` -> bfloat16 on CUDA (the published settings), float32 on CPU."""
    import torch

    if dtype in (None, "", "auto"):
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    try:
        value = getattr(torch, dtype)
    except AttributeError:
        value = None
    if not isinstance(value, torch.dtype):
        from molora.errors import ConfigError

        raise ConfigError(f"unknown dtype {dtype!r} (use auto, float32, bfloat16 or float16)", "--dtype")
    return value


def load_model_and_processor(path: str, dtype: str | None = "auto", device: str | None = "auto",
                             quantization: str | None = None):
    """``MoLoRAModel`` + ``MoLoRAProcessor`` from a checkpoint directory, hub id or preset name,
    in eval mode on ``device`` with ``dtype``, its frozen base quantised with ``quantization`` (int8 /
    int4 / nf4; ``molora/quantization.py``). Returns ``(model, processor, device, dtype)``."""
    from molora import MoLoRAModel, MoLoRAProcessor

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if quantization:  # placed first, then quantised: the quantised layers run in the dtype asked for
        model = MoLoRAModel.from_pretrained(path, dtype=torch_dtype, device=device, quantization_config=quantization)
    else:
        model = MoLoRAModel.from_pretrained(path)
        model.to(device=device, dtype=torch_dtype).eval()
    # every row of an evaluation batch routes to the same adapter: one matmul per linear with the
    # merged weight (same numbers within float rounding, tested in tests/test_routing.py)
    model.set_merged_inference(True)
    processor = MoLoRAProcessor.from_pretrained(path)
    return model, processor, device, torch_dtype


def quantization_setting(model) -> dict:
    """``{"quantization": ...}`` for a run's settings when the model's base is quantised (else nothing, so
    the settings of a run over a float model stay as they were)."""
    spec = getattr(model, "quantization", None)
    return {} if spec is None else {"quantization": spec.to_dict()}


def conversation(item: Item, medium) -> list[dict]:
    """The single-turn prompt of an item: its medium, then its text (the reference harnesses' order)."""
    return [{"role": "user", "content": [{"type": item.kind, item.kind: medium},
                                         {"type": "text", "text": item.prompt}]}]


class Generator:
    """``generator(conversations) -> (texts, seconds)``: processor + generate + decode, timed
    (CUDA is synchronised before the clock is read). Texts are stripped of surrounding spaces."""

    def __init__(self, model, processor, max_new_tokens: int):
        self.model, self.processor, self.max_new_tokens = model, processor, max_new_tokens
        self.calls = 0

    def _sync(self):
        import torch

        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)

    def __call__(self, conversations: Sequence[list[dict]]) -> tuple[list[str], float]:
        import torch

        self._sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            batch = self.processor(list(conversations))
            batch = {k: v.to(self.model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            ids = self.model.generate(**batch, max_new_tokens=self.max_new_tokens)
            texts = self.processor.batch_decode(ids.cpu(), skip_special_tokens=True)
        self._sync()
        self.calls += 1
        return [t.strip() for t in texts], time.perf_counter() - t0


def _load(item: Item, skips: SkipList):
    """The item's medium, or None after recording why it cannot be used."""
    from molora.errors import MediaError

    try:
        return item.load()
    except MediaError as e:
        skips.add(item.source or item.key, item.media or str(e.item or ""), e)
        return None


def _generate(generator: Generator, batch: list[tuple[Item, object]], skips: SkipList):
    """``generator`` over the batch; when the processor refuses a medium (``MediaError``, e.g. NaN
    samples), the culprits are found one conversation at a time (untimed), recorded, and the rest of
    the batch is generated again (timed afresh). Returns ``(items, texts, seconds)``."""
    from molora.errors import MediaError

    try:
        texts, seconds = generator([conversation(it, m) for it, m in batch])
        return [it for it, _ in batch], texts, seconds
    except MediaError:
        pass
    good = []
    for it, medium in batch:
        try:
            generator.processor([conversation(it, medium)])
            good.append((it, medium))
        except MediaError as e:
            skips.add(it.source or it.key, it.media or it.key, e)
    if not good:
        return [], [], 0.0
    texts, seconds = generator([conversation(it, m) for it, m in good])
    return [it for it, _ in good], texts, seconds


def run_items(items: Sequence[Item], results: ResultFile, generator: Generator, *,
              make_row: Callable[[Item, str, float], dict], batch_size: int, warmup_batches: int = 1,
              desc: str = "eval", sort_by_length: bool = False, skips: SkipList | None = None) -> int:
    """Generate for every item whose key is not yet in ``results``; returns how many were done now.

    ``make_row(item, prediction, seconds)`` builds the result row (``seconds`` = the batch's timed
    seconds / batch size, the leaderboard's per-item ``time``). ``sort_by_length`` orders the
    remaining items longest first before batching. An item whose medium cannot be used is left out
    and recorded in ``skips`` (with ``skips.strict`` the run stops there; rows already written stay).
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        from molora.errors import ConfigError

        raise ConfigError(f"batch size must be >= 1, got {batch_size}", "--batch-size")
    skips = skips if skips is not None else SkipList()
    todo = [it for it in items if it.key not in results.done]
    if sort_by_length:
        todo.sort(key=lambda it: -it.length)  # stable: ties keep source order
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    done = 0
    with tqdm(total=len(items), initial=len(items) - len(todo), desc=desc, unit="item", dynamic_ncols=True) as bar:
        warm = warmup_batches
        for batch in batches:
            loaded = [(it, m) for it in batch if (m := _load(it, skips)) is not None]   # decoding: not timed
            if loaded and warm > 0:   # untimed warm-up on the first batch (its bad media are found here)
                for _ in range(warm):
                    kept = {id(it) for it in _generate(generator, loaded, skips)[0]}
                    loaded = [(it, m) for it, m in loaded if id(it) in kept]
                warm = 0
            if loaded:
                kept, texts, seconds = _generate(generator, loaded, skips)
                if kept:
                    per_item = seconds / len(kept)
                    results.append([make_row(it, text, per_item) for it, text in zip(kept, texts)])
                    done += len(kept)
            bar.update(len(batch))
    return done
