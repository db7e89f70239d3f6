"""The trainer's periodic evaluation: held-out loss, and task metrics from greedy generation
(WER for ASR rows, ANLS for VQA rows, relaxed accuracy for rows tagged as charts)."""
from __future__ import annotations

import torch

from molora.eval import mean_anls, relaxed_accuracy_any, word_error_rate
from molora.loss import count_label_tokens


def prompt_of(sample) -> list[dict]:
    """The conversation up to (not including) the reference answer."""
    msgs = sample.messages
    return msgs[:-1] if msgs and msgs[-1]["role"] == "assistant" else msgs


def reference_of(sample) -> str:
    msgs = sample.messages
    return msgs[-1]["content"] if msgs and msgs[-1]["role"] == "assistant" else (sample.chosen or "")


def rounds_of(n: int, rank: int, world: int, in_step: bool) -> list[int | None]:
    """The batches (of ``n``, in order) one process evaluates: every ``world``-th from its ``rank``, so each
    batch holds the rows it holds in a one-process run. ``in_step`` (a sharded model: every process must
    enter every forward): as many rounds on every process, ``None`` for a round a process runs only to
    keep in step (its result is dropped)."""
    mine: list[int | None] = list(range(rank, n, world))
    return mine + [None] * ((-(-n // world) - len(mine)) if in_step else 0)


@torch.no_grad()
def greedy_predictions(model, processor, samples, *, max_new_tokens: int = 32, full_length: bool = False) -> list[str]:
    """Greedy answers to the prompts of ``samples`` (one batch). ``full_length``: decode all
    ``max_new_tokens`` steps even when every row has ended, and cut each row after its first end token, as
    the early stop would have: the same text, with a number of forwards that does not depend on the rows
    (the processes of a sharded model must run the same forwards)."""
    was_training = model.training
    model.eval()
    batch = processor([prompt_of(x) for x in samples])
    if full_length:
        eos = torch.tensor(model.config.backbone.eos_token_ids)
        ids = model.generate(**batch, max_new_tokens=max_new_tokens, eos_token_ids=[]).cpu()
        ended = torch.isin(ids, eos).long().cumsum(1)
        after = (ended - torch.isin(ids, eos).long()) > 0  # past the first end token
        ids = ids.masked_fill(after, model.config.backbone.pad_token_id)
    else:
        ids = model.generate(**batch, max_new_tokens=max_new_tokens)
    model.train(was_training)
    return [p.strip() for p in processor.batch_decode(ids, skip_special_tokens=True)]


@torch.no_grad()
def generation_metrics(model, processor, samples, *, batch_size: int = 8, max_new_tokens: int = 32,
                       chart_sources: tuple[str, ...] = ("chart",)) -> dict:
    """Greedy predictions for ``samples`` and the metrics their kinds call for."""
    preds: list[str] = []
    for s in range(0, len(samples), batch_size):
        preds += greedy_predictions(model, processor, samples[s: s + batch_size], max_new_tokens=max_new_tokens)
    return task_metrics(samples, preds, chart_sources=chart_sources)


def task_metrics(samples, preds: list[str], *, chart_sources: tuple[str, ...] = ("chart",)) -> dict:
    """The metrics the kinds of ``samples`` call for, from their predictions ``preds`` (and the
    predictions themselves)."""
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


@torch.no_grad()
def media_reliance(model, processor, samples, *, batch_size: int = 16) -> dict:
    """How much the answers depend on the media: mean answer loss (nats per answer token) with each
    row's own image / audio, and with the media of the next row instead (rotated by one). A model
    that reads its inputs does clearly worse with the wrong media; equal figures mean its answers
    come from the question text alone. ``{"own", "swapped", "tokens"}``."""
    import copy

    media = {m.content_type for m in processor.modalities.values()}

    def with_media_of(sample, donor):
        msgs = copy.deepcopy(sample.messages)
        donated = [c for m in donor.messages if isinstance(m["content"], list) for c in m["content"]
                   if c.get("type") in media]
        for m in msgs:
            if isinstance(m["content"], list):
                for c in m["content"]:
                    kind = c.get("type")
                    match = next((d for d in donated if d.get("type") == kind), None)
                    if match is not None:
                        c[kind] = match[kind]
                        donated.remove(match)
        return msgs

    n = len(samples)
    own, tokens = answer_loss(model, processor, [x.messages for x in samples], batch_size=batch_size)
    swapped, _ = answer_loss(model, processor, [with_media_of(samples[i], samples[(i + 1) % n]) for i in range(n)],
                             batch_size=batch_size)
    return {"own": round(own / max(tokens, 1), 4), "swapped": round(swapped / max(tokens, 1), 4), "tokens": tokens}


@torch.no_grad()
def answer_loss(model, processor, conversations: list, *, batch_size: int = 16) -> tuple[float, int]:
    """Teacher-forced loss of the assistant turns of ``conversations``: (summed nats, answer tokens).
    Divide the one by the other for nats per answer token."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for s in range(0, len(conversations), batch_size):
        batch = processor(conversations[s: s + batch_size], return_labels=True)
        total += float(model(**batch, return_logits=False, loss_reduction="sum").loss)
        tokens += int(count_label_tokens(batch["labels"]))
    model.train(was_training)
    return total, tokens


@torch.no_grad()
def preference_metrics(policy, reference, processor, samples, *, beta: float, batch_size: int = 8) -> dict:
    """DPO's implicit reward on held-out preference pairs: ``policy`` (after the stage) against
    ``reference`` (the model the stage started from). ``reward_margin``: mean of beta * ((log pi(chosen)
    - log ref(chosen)) - (log pi(rejected) - log ref(rejected))); ``reward_accuracy``: share of pairs with
    a positive margin; ``chosen_preferred_before`` / ``_after``: share of pairs whose chosen reply is more
    likely than the rejected one under the reference / the policy."""
    from .collate import Collator
    from .losses import pair_logps

    collator = Collator(processor)
    was = policy.training, reference.training
    policy.eval()
    reference.eval()
    rows = []
    for s in range(0, len(samples), batch_size):
        batch = collator.collate_preference(samples[s: s + batch_size])
        if batch is None:
            continue
        pc, pr = pair_logps(policy, batch)
        rc, rr = pair_logps(reference, batch)
        rows += zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist())
    policy.train(was[0])
    reference.train(was[1])
    n = max(len(rows), 1)
    margins = [beta * ((a - c) - (b - d)) for a, b, c, d in rows]
    return {"pairs": len(rows), "reward_margin": sum(margins) / n, "reward_accuracy": sum(m > 0 for m in margins) / n,
            "chosen_preferred_before": sum(c > d for _, _, c, d in rows) / n,
            "chosen_preferred_after": sum(a > b for a, b, _, _ in rows) / n, "skipped": collator.num_skipped}
