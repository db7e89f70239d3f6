"""Preference pairs from a model's own wrong answers: chosen = the reference answer, rejected = what
the model said instead.

The quickstart's DPO stage learns from these (on-policy pairs, as preference data is usually
collected): the tiny model cannot tell a right answer from a plausible wrong one it never produces,
but it can learn to stop preferring the answers it does give wrongly. A question the model answers
right makes no pair. Right and wrong are judged by the evaluators' own rules: relaxed accuracy for
charts, ANLS >= 0.5 for documents (the threshold ANLS itself uses), exact normalised text for speech.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from molora.eval import anls, normalize_english, relaxed_accuracy_any
from molora.stages.evaluation import prompt_of, reference_of
from molora.data.manifest import Sample

__all__ = ["is_right", "is_wrong", "mistake_pairs", "write_pairs"]


def is_wrong(sample: Sample, prediction: str, chart_sources: tuple[str, ...] = ("chart",)) -> bool:
    """True when ``prediction`` is a non-empty wrong answer to ``sample`` (an empty one makes no pair)."""
    p = prediction.strip()
    if not p:
        return False
    if sample.kind == "asr":
        return normalize_english(p) != normalize_english(reference_of(sample))
    answers = sample.answers or [reference_of(sample)]
    if any(c in sample.source for c in chart_sources):
        return not relaxed_accuracy_any(p, answers)
    return anls(p, answers) < 0.5


def is_right(sample: Sample, prediction: str) -> bool:
    return bool(prediction.strip()) and not is_wrong(sample, prediction)


def mistake_pairs(samples: list[Sample], predictions: list[str], kinds: tuple[str, ...] = ("vqa",)) -> list[Sample]:
    """Preference samples (prompt, chosen = reference, rejected = prediction) for the wrong answers."""
    return [Sample(prompt_of(s), "preference", s.source, chosen=reference_of(s), rejected=p.strip(), length=s.length)
            for s, p in zip(samples, predictions) if s.kind in kinds and is_wrong(s, p)]


def _relative(messages: list[dict], root: Path) -> list[dict]:
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = [{**part, **{k: Path(part[k]).resolve().relative_to(root).as_posix()
                                   for k in ("image", "audio") if isinstance(part.get(k), str)}} for part in content]
        out.append({**m, "content": content})
    return out


def write_pairs(path: str | os.PathLike, pairs: list[Sample]) -> Path:
    """A preference manifest at ``path`` (in the data root of every pair's media: paths relative to
    its folder), written through a temporary file and a rename."""
    path = Path(path)
    root = path.parent.resolve()
    rows = [{"messages": _relative(s.messages, root), "chosen": s.chosen, "rejected": s.rejected, "from": s.source}
            for s in pairs]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)
    return path
