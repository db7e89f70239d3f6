"""The trainer's periodic evaluation: held-out loss, and task metrics from greedy generation
(WER for ASR rows, ANLS for VQA rows, relaxed accuracy for rows tagged as charts)."""
from __future__ import annotations

import torch

from molora.eval import mean_anls, relaxed_accuracy_any, word_error_rate


def prompt_of(sample) -> list[dict]:
    """The conversation up to (not including) the reference answer."""
    msgs = sample.messages
    return msgs[:-1] if msgs and msgs[-1]["role"] == "assistant" else msgs


def reference_of(sample) -> str:
    msgs = sample.messages
    return msgs[-1]["content"] if msgs and msgs[-1]["role"] == "assistant" else (sample.chosen or "")


@torch.no_grad()
def generation_metrics(model, processor, samples, *, batch_size: int = 8, max_new_tokens: int = 32,
                       chart_sources: tuple[str, ...] = ("chart",)) -> dict:
    """Greedy predictions for ``samples`` and the metrics their kinds call for."""
    was_training = model.training
    model.eval()
    preds: list[str] = []
    for s in range(0, len(samples), batch_size):
        chunk = samples[s: s + batch_size]
        batch = processor([prompt_of(x) for x in chunk])
        ids = model.generate(**batch, max_new_tokens=max_new_tokens)
        preds += [p.strip() for p in processor.batch_decode(ids, skip_special_tokens=True)]
    model.train(was_training)
    out: dict = {}
    asr = [(reference_of(x), p) for x, p in zip(samples, preds) if x.kind == "asr"]
    if asr:
        out["wer"] = word_error_rate([r for r, _ in asr], [p for _, p in asr])
    vqa = [(x, p) for x, p in zip(samples, preds) if x.kind == "vqa"]
    charts = [(x, p) for x, p in vqa if any(c in x.source for c in chart_sources)]
    docs = [(x, p) for x, p in vqa if not any(c in x.source for c in chart_sources)]
    if docs:
        out["anls"] = mean_anls([p for _, p in docs], [x.answers or [reference_of(x)] for x, _ in docs])
    if charts:
        hits = [relaxed_accuracy_any(p, x.answers or [reference_of(x)]) for x, p in charts]
        out["relaxed_accuracy"] = sum(hits) / len(hits)
    out["predictions"] = preds
    return out
