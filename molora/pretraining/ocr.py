"""The vision tower's dense-reading phase: every pooled cell of the HD crop grid predicts the characters
drawn inside it (``molora/synthetic/ocr.py``), through a throw-away MLP head."""
from __future__ import annotations

import itertools
import random

import torch

from molora.loss import next_token_loss
from molora.synthetic.charts import draw_chart
from molora.synthetic.documents import draw_document
from molora.synthetic.ocr import NUM_CLASSES, cell_targets

from .loop import run_phase, settings, train_only


def ocr_pages(seed: int):
    """An endless stream of fresh pages (documents and charts from a pretraining-only seed)."""
    rng = random.Random(f"pretrain-ocr-{seed}")
    while True:
        yield draw_document(rng) if rng.random() < 0.5 else draw_chart(rng)


def ocr_batch(model, processor, head, pages, slots: int):
    """Dense reading loss of one batch of pages: every pooled cell of every sub-crop predicts its
    characters in order (``molora/synthetic/ocr.py``); returns (loss, accuracy on the character
    slots, cell exact-match rate)."""
    tf, emb, v = processor.image_processor, model.image_embed, model.config.vision
    out = tf([p.image for p in pages])
    g = emb.pooled_per_side
    crops, masks, targets = [], [], []
    for i, page in enumerate(pages):
        t = cell_targets(page.labels, *page.image.size, v.image_size, v.patch_size, v.dynamic_hd, slots)
        n = (t.shape[0] // g) * (t.shape[1] // g)
        crops.append(out["image_pixel_values"][i, 1:1 + n])
        masks.append(out["image_attention_mask"][i, 1:1 + n])
        targets.append(t)
    feats = emb.crop_features(torch.cat(crops), torch.cat(masks).bool())  # T, g, g, D
    logits, labels, k = [], [], 0
    for t in targets:
        rows, cols = t.shape[0] // g, t.shape[1] // g
        grid = feats[k:k + rows * cols].reshape(rows, cols, g, g, -1).transpose(1, 2).reshape(rows * g, cols * g, -1)
        k += rows * cols
        logits.append(head(grid).flatten(0, 1))
        labels.append(t.flatten(0, 1))
    logits, labels = torch.cat(logits), torch.cat(labels)  # cells, slots*C ; cells, slots
    logits = logits.view(labels.shape[0], slots, -1)
    inked = labels[:, 0] > 0
    weight = torch.where(inked, 1.0, 0.05)[:, None].expand_as(labels)
    ce = next_token_loss(logits, labels, reduction="none")  # the package's one cross-entropy; per slot
    loss = (ce * weight.flatten()).sum() / weight.sum()
    with torch.no_grad():
        pred = logits.argmax(-1)
        chars = labels > 0
        acc = float((pred == labels)[chars].float().mean())
        exact = float((pred == labels).all(-1)[inked].float().mean())
    return loss, acc, exact


def pretrain_ocr(model, processor, steps: int, batch: int, lr: float, seed: int, losses: list,
                 slots: int = 6) -> None:
    """Phase 2c: the vision tower learns to read with a dense per-cell character objective (a
    small MLP head on the pooled cells, thrown away afterwards)."""
    dim = model.config.vision.hidden_size
    head = torch.nn.Sequential(torch.nn.Linear(dim, 256), torch.nn.GELU(), torch.nn.Linear(256, slots * NUM_CLASSES))
    named = train_only(model, ["vision_encoder"]) + [(f"head.{n}", p) for n, p in head.named_parameters()]
    stream, held = ocr_pages(seed), list(itertools.islice(ocr_pages(seed + 10_000), 32))
    model.train()
    train_acc = {}

    def step_loss(step: int):
        loss, train_acc["char"], _ = ocr_batch(model, processor, head, list(itertools.islice(stream, batch)), slots)
        return loss

    def held_out() -> str:
        with torch.no_grad():
            _, hacc, hexact = ocr_batch(model, processor, head, held, slots)
        return f" train char acc {train_acc['char']:.3f} held-out char acc {hacc:.3f} cell exact {hexact:.3f}"

    run_phase(named, settings(lr), steps, step_loss, losses, "ocr", 250, held_out)
