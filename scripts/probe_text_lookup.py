"""Probe: can a model's backbone answer the synthetic document / chart questions when the page is
given as *text* instead of an image? Every such question is an in-context look-up ("Name: Carla
Smith ... What name is written on the form?"), so a backbone that cannot do it from text cannot
do it from image tokens either.

    python scripts/probe_text_lookup.py [--model tiny] [--pages 40] [--train-steps 0 --lr 3e-4 --eval-every 0]

Prints held-out exact-match accuracy (generated answer equals one of the accepted answers), before
and, with ``--train-steps N``, after training every decoder layer on such text questions from
other pages (batch 16; a probe of how fast the backbone can learn look-up, not a recipe).
Session 4 on the shipped tiny weights (one core): 26 / 304 held-out document and chart questions
before; with ``--train-steps 12000 --lr 5e-4 --eval-every 2000`` (830 s): 28, 39, 38, 42, 50 and 75 / 304
after 2k ... 12k steps -- look-up is learnable, slowly.
"""
from __future__ import annotations

import argparse
import math
import random
import time

import torch

from molora.synthetic.lookup import PROMPT


def text_rows(seed: int, pages: int) -> list[tuple[str, str, list[str]]]:
    """(page text in drawing order, question, accepted answers) from freshly drawn pages."""
    from molora.synthetic.charts import draw_chart
    from molora.synthetic.documents import draw_document

    rng = random.Random(f"probe-text-lookup-{seed}")
    rows = []
    for _ in range(pages):
        page = draw_document(rng) if rng.random() < 0.5 else draw_chart(rng)
        text = " ".join(label.text for label in page.labels)
        rows += [(text, qa.question, qa.answers) for qa in page.qas]
    return rows


def conversation(text: str, question: str, answer: str | None = None) -> list[dict]:
    conv = [{"role": "user", "content": PROMPT.format(text=text, question=question)}]
    return conv + ([{"role": "assistant", "content": answer}] if answer is not None else [])


@torch.no_grad()
def exact_match(model, processor, rows, batch: int = 16) -> tuple[int, int]:
    model.eval()
    hits = 0
    for k in range(0, len(rows), batch):
        chunk = rows[k:k + batch]
        enc = processor([conversation(t, q) for t, q, _ in chunk])
        for pred, (_, _, answers) in zip(processor.batch_decode(model.generate(**enc, max_new_tokens=16)), chunk):
            hits += pred.strip() in answers
    return hits, len(rows)


def train_lookup(model, processor, rows, steps: int, lr: float, seed: int, held_out=None,
                 eval_every: int = 0, drills: bool = False, batch: int = 16) -> None:
    """Plain: every decoder layer, constant ``lr``, page rows only. ``drills``: close to
    ``scripts/pretrain_tiny.py``'s look-up phase -- a third each of page rows, key-value recall and
    repeat-the-text rows (``molora/synthetic/lookup.py``), every backbone weight (embeddings and
    head too), 100 warm-up steps then cosine to a tenth, gradients clipped at 1. It differs from
    the phase in two ways, kept so that the figures quoted in ``lookup.py`` stay reproducible:
    page rows are this probe's (labels in drawing order, not ``page_as_text``), and the phase's
    cosine ends at 0.05 instead of 0.1."""
    from molora.synthetic.lookup import drill_row

    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("language_model.layers.") or drills and (
            name.startswith(("language_model.", "lm_head.")) and ".lora_" not in name))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98) if drills else (0.9, 0.999), weight_decay=0.0)
    rng, t0 = random.Random(seed), time.time()
    model.train()
    for step in range(steps):
        if drills:
            for g in opt.param_groups:
                g["lr"] = lr * min(1.0, (step + 1) / 100) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)))
            convs = []
            for _ in range(batch):
                kind = rng.choice(("page", "keys", "repeat"))
                if kind == "page":
                    t, q, a = rows[rng.randrange(len(rows))]
                    convs.append(conversation(t, q, a[0]))
                else:
                    convs.append(drill_row(kind, rng))
        else:
            convs = [conversation(t, q, a[0]) for t, q, a in rng.sample(rows, min(batch, len(rows)))]
        enc = processor(convs, return_labels=True)
        loss = model(**enc, return_logits=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if drills:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 250 == 0 or step == steps - 1:
            print(f"step {step + 1}/{steps} loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
        if held_out and eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            print(f"step {step + 1}: exact %d / %d" % exact_match(model, processor, held_out), flush=True)
            model.train()


def main() -> None:
    from molora import MoLoRAModel, MoLoRAProcessor

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="preset name or checkpoint directory")
    ap.add_argument("--pages", type=int, default=40, help="held-out pages (a few questions each)")
    ap.add_argument("--train-steps", type=int, default=0)
    ap.add_argument("--train-pages", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--eval-every", type=int, default=0, help="held-out exact match every N training steps")
    ap.add_argument("--drills", action="store_true", help="train with the look-up phase's recipe (see train_lookup)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, processor = MoLoRAModel.from_pretrained(args.model), MoLoRAProcessor.from_pretrained(args.model)
    held_out = text_rows(args.seed + 1000, args.pages)
    print("before: exact %d / %d" % exact_match(model, processor, held_out))
    if args.train_steps:
        train_lookup(model, processor, text_rows(args.seed, args.train_pages), args.train_steps, args.lr, args.seed,
                     held_out, args.eval_every, args.drills, args.batch)
        print("after: exact %d / %d" % exact_match(model, processor, held_out))


if __name__ == "__main__":
    main()
