"""Pretrain the tiny preset's parts on the synthetic corpora and write them to ``molora/weights/tiny/``.

    python scripts/pretrain_tiny.py                       # one full run of the default phases (~30 min, 1 thread)
    python scripts/pretrain_tiny.py --smoke --out /tmp/w  # a few steps of every phase (tests)
    scripts/pretrain_tiny_recipe.sh OUT                   # the shipped weights: four runs (~2.2 h, 1 thread)
    scripts/pretrain_tiny_everyday.sh OUT                 # the same four runs on everyday English as well

``--corpus everyday`` adds the everyday-English corpus (``molora/synthetic/everyday_corpus.py``: generated
sentences to the text phases, their espeak-ng clips to the speech phases) and learns a larger tokenizer
(``--vocab-size``, default 6144) from the corpora's text plus English word frequencies; ``--tokenizer PATH``
uses a ready tokenizer.json instead (the backbone's vocabulary follows the tokenizer). docs/everyday-english.md.

Like the real model's parts (Phi-4-mini, SigLIP, the speech encoder) the tiny ones are pretrained
before molora's stages run, and the stages then start from them. Phases (``--phases``, in order):

- tokenizer: byte-level BPE learned from the corpora's text (the byte tokenizer's ids kept, digits single);
- ``lm``: the backbone as a causal LM on the corpora's text, every token labelled;
- ``lookup``: in-context look-up from text drills (``molora/synthetic/lookup.py``), loss on the answers;
- ``ctc`` / ``speech``: global CMVN for the conformer, word-level CTC over the speech corpus's closed
  vocabulary (a throw-away linear head), then a pass through the LM with a temporary projector + LoRA;
- ``ocr``: dense reading: every pooled cell of the HD crop grid predicts the characters drawn inside it
  (``molora/synthetic/ocr.py``), through a throw-away MLP head;
- ``crops``: read small crops of a page through the LM ("Read the text." -> the exact string);
- ``regions``: questions on bands of a document around the answer (``answer_band``);
- ``vision``: answer the documents / charts questions through the LM (temporary projector + vision LoRA);
- ``mixed``: speech and VQA rows (and drills with ``keep_drills``) in every batch, so neither is forgotten.

In the phases after ``lm`` the backbone trains too (``--text-only-backbone`` keeps it frozen): a backbone
pretrained on text alone and then frozen ignores the audio. Only the tokenizer, the backbone, the vision
tower and the conformer are written (``tokenizer.json``, ``model.safetensors`` after every phase, so a
later run can start from it with ``--start-from``, and ``pretrain.json`` with the recipe and the losses);
projectors and LoRAs are thrown away, so the quickstart's stages still have to align them. Deterministic
for a given seed and thread count. What each phase measured, and how the shipped recipe was arrived at:
``docs/tiny-pretraining.md``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from molora.synthetic.lookup import lookup_conversations, page_as_text, page_text, text_lines

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "molora" / "weights" / "tiny"
SHIPPED = re.compile(r"^(language_model\.(?!.*\.lora_[AB]\.)|lm_head\.|image_embed\.img_processor\.|audio_embed\.encoder\.)")

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


def alongside(main: list, extras: list[tuple[list, int]]) -> list:
    """``main`` plus rows of each ``(pool, percent)`` so that the pool makes up about ``percent`` %
    of the result (pool rows reused in turn when the pool is small). Used to keep look-up drills and
    speech rows in the crops / vision phases, which otherwise wear those skills away."""
    total = sum(pct for pool, pct in extras if pool)
    if total >= 100:
        raise ValueError(f"extra rows would make up {total}% of the phase: keep the shares under 100")
    out = list(main)
    for pool, pct in extras:
        if pool and pct:
            k = round(len(main) * pct / (100 - total))
            out += [pool[i % len(pool)] for i in range(k)]
    return out


def _update(loss, params, opt) -> float:
    """One optimiser step on ``loss`` (grad-norm clipped at 1); returns the loss value."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())

def log(msg: str) -> None:
    print(f"[pretrain {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cosine(step: int, total: int, warm: int = 20) -> float:
    if step < warm:
        return (step + 1) / warm
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


def _strip_media(messages: list[dict]) -> list[dict]:
    out = []
    for m in messages:
        c = m["content"]
        if isinstance(c, list):
            c = " ".join(p.get("text", "") for p in c if p.get("type") == "text").strip()
        out.append({"role": m["role"], "content": c})
    return out


def text_conversations(corpora: dict, seed: int) -> list[list[dict]]:
    """Text-only conversations from every training manifest, plus bare sentences."""
    from molora.data.manifest import read_manifest
    from molora.synthetic.sentences import generate_sentences, sentence_split

    convs: list[list[dict]] = []
    for name in ("speech", "documents", "charts", "joint"):
        for s in read_manifest(corpora[name]["train"]):
            convs.append(_strip_media(s.messages))
    sents = [s for s in generate_sentences(4000, seed=seed + 7) if sentence_split(s, seed) == "train"]
    convs += [[{"role": "assistant", "content": s}] for s in sents]
    return convs


def image_row(image, prompt: str, answers: list[str], source: str):
    """One VQA training row: ``image`` + ``prompt`` -> ``answers[0]`` (all of ``answers`` accepted)."""
    from molora.data.manifest import Sample

    return Sample([{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]},
                   {"role": "assistant", "content": answers[0]}], "vqa", source, answers=list(answers))


def drill_rows(n: int, seed: int) -> list:
    """``n`` look-up drill conversations (``lookup_conversations``) as text-only training rows."""
    from molora.data.manifest import Sample

    return [Sample(c, "chat", f"pretrain-lookup:{seed}:{i}") for i, c in enumerate(lookup_conversations(n, seed))]


READ_PROMPTS = {"document": "Read the text on the page.", "chart": "Convert the chart to a table.",
                "crop": "Read the text."}


def reading_samples(n: int, seed: int) -> list:
    """``n`` fresh pages (documents and charts drawn from a pretraining-only seed, never the corpora's
    pages), each as a page-reading row (documents: the text in reading order; charts: title, then
    ``category value`` per line, chart-to-table style) and all of its questions as VQA rows.
    More supervision per image than the corpora's two questions per page: the tower learns to read."""
    from molora.data.manifest import VQA_SUFFIX
    from molora.synthetic.charts import draw_chart
    from molora.synthetic.documents import draw_document

    rng = random.Random(f"pretrain-read-{seed}")
    rows = []
    for i in range(n):
        if i % 2 == 0:
            page = draw_document(rng)
            read, qas = page_text(page.labels), page.qas
            prompt = READ_PROMPTS["document"]
        else:
            page = draw_chart(rng)
            read = page_as_text(page)
            qas, prompt = page.qas, READ_PROMPTS["chart"]
        image = page.image
        rows.append(image_row(image, prompt, [read], f"pretrain-read:{i}"))
        rows += [image_row(image, qa.question + VQA_SUFFIX, qa.answers, f"pretrain-read:{i}:{q}")
                 for q, qa in enumerate(qas)]
    return rows


def reading_crops(n: int, seed: int) -> list:
    """``n`` "read the text" rows on small crops of fresh pages (documents and charts from a
    pretraining-only seed): one drawn string or one text line (``text_lines``), with 2-8 px of
    margin; the answer is the exact string. A crop is a handful of image tokens, so the LM learns
    to read characters out of the tokens before it has to find them on a whole page (curriculum:
    crops, then pages)."""
    from molora.synthetic.charts import draw_chart
    from molora.synthetic.documents import draw_document

    rng = random.Random(f"pretrain-crops-{seed}")
    rows = []
    while len(rows) < n:
        page = draw_document(rng) if rng.random() < 0.5 else draw_chart(rng)
        labs = [lab for lab in page.labels if lab.text.strip()]
        units = [[lab] for lab in labs] + [ln for ln in text_lines(labs) if len(ln) > 1]
        w, h = page.image.size
        for u in rng.sample(units, min(len(units), 4)):
            box = (max(0, min(lab.box[0] for lab in u) - rng.randint(2, 8)),
                   max(0, min(lab.box[1] for lab in u) - rng.randint(2, 8)),
                   min(w, max(lab.box[2] for lab in u) + rng.randint(2, 8)),
                   min(h, max(lab.box[3] for lab in u) + rng.randint(2, 8)))
            text = " ".join(lab.text for lab in u)
            rows.append(image_row(page.image.crop(box), READ_PROMPTS["crop"], [text], f"pretrain-crop:{len(rows)}"))
    return rows[:n]


def answer_band(page, qa, rng: random.Random):
    """The crop box of a band of ``page``'s text lines around ``qa``'s answer: its line(s) with 0-2
    lines above and below, a table's header line kept, full width, 2-8 px of margin; ``None`` when
    the answer is not a drawn label."""
    lines = text_lines([lab for lab in page.labels if lab.text.strip()])
    at = [i for i, ln in enumerate(lines) for lab in ln if lab.key == qa.key or lab.text in qa.answers]
    if not at:
        return None
    header = [i for i, ln in enumerate(lines) if any(lab.role == "header" for lab in ln)]
    lo, hi = max(0, min(at) - rng.randint(0, 2)), min(len(lines) - 1, max(at) + rng.randint(0, 2))
    if header:
        lo = min(lo, header[0])
    band = [lab for ln in lines[lo:hi + 1] for lab in ln]
    w, h = page.image.size
    return (0, max(0, min(lab.box[1] for lab in band) - rng.randint(2, 8)),
            w, min(h, max(lab.box[3] for lab in band) + rng.randint(2, 8)))


def region_rows(n: int, seed: int) -> list:
    """``n`` question rows on bands of fresh documents (pretraining-only seed; ``answer_band``), with
    the band's question. Between crops (read one string) and whole pages (find the field among
    ~110 image tokens): the LM learns to find a field among a few lines of image tokens first."""
    from molora.data.manifest import VQA_SUFFIX
    from molora.synthetic.documents import draw_document

    rng = random.Random(f"pretrain-regions-{seed}")
    rows = []
    while len(rows) < n:
        page = draw_document(rng)
        for qa in rng.sample(page.qas, min(2, len(page.qas))):
            box = answer_band(page, qa, rng)
            if box is None:
                continue
            rows.append(image_row(page.image.crop(box), qa.question + VQA_SUFFIX, qa.answers,
                                  f"pretrain-region:{len(rows)}"))
    return rows[:n]


@torch.no_grad()
def rescale_tower(model, target: float, seed: int) -> float:
    """Scale the vision tower's residual stream (patch and position embeddings, every layer's
    attention-out and fc2 writes) so that the pooled features' mean norm is ``target``. The layers
    are pre-LayerNorm, so this is an exact reparametrisation (features x factor, nothing else
    changes); it brings the projected image tokens near the text embeddings' scale (the shipped
    tower's features have norm ~150: a fresh projector turns them into tokens of norm ~50 against
    ~2 for text embeddings). Returns the factor."""
    from molora.synthetic.charts import draw_chart
    from molora.synthetic.documents import draw_document

    rng = random.Random(f"pretrain-norm-{seed}")
    pages = [draw_document(rng).image for _ in range(3)] + [draw_chart(rng).image for _ in range(3)]
    emb = model.image_embed
    from molora.encoders.image_transform import ImageTransform

    b = ImageTransform(model.config.vision)(pages)
    px, mask = b["image_pixel_values"].flatten(0, 1), b["image_attention_mask"].flatten(0, 1).bool()
    before = float(emb.crop_features(px, mask).norm(dim=-1).mean())
    c = target / before
    for n, p in emb.img_processor.named_parameters():
        if n.startswith("embeddings.") or (n.startswith("encoder.") and (".self_attn.out_proj." in n or ".mlp.fc2." in n)):
            p.mul_(c)
    after = float(emb.crop_features(px, mask).norm(dim=-1).mean())
    log(f"tower features rescaled x{c:.4f}: mean norm {before:.1f} -> {after:.2f}")
    return c


def _optim(params, lr):
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.0, foreach=False)


def pretrain_text(model, processor, convs, steps: int, batch: int, lr: float, rng: random.Random, losses: list,
                  tag: str = "lm", answers_only: bool = False, warm: int = 20, every: int = 100):
    """Train the backbone alone on text conversations. Phase 1 (``lm``): every token labelled.
    Phase 1b (``lookup``, ``answers_only``): the look-up drills (``molora/synthetic/lookup.py``:
    page-as-text questions, key-value recall, repeat-the-text), loss on the answers only."""
    from molora.stages.freeze import component_of

    params = [p for n, p in model.named_parameters() if component_of(n) == "llm"]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = _optim(params, lr)
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * cosine(step, steps, warm)
        rows = [convs[rng.randrange(len(convs))] for _ in range(batch)]
        if answers_only:
            loss = model(**processor(rows, return_labels=True), return_logits=False).loss
        else:
            b = processor(rows, add_generation_prompt=False)
            labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
            loss = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=labels).loss
        losses.append(_update(loss, params, opt))
        if step % every == 0 or step == steps - 1:
            log(f"{tag} step {step + 1}/{steps} loss {losses[-1]:.3f}")


def _audio_features(processor, samples):
    import soundfile as sf

    feats = []
    for s in samples:
        path = next(p["audio"] for m in s.messages if isinstance(m["content"], list) for p in m["content"]
                    if p.get("type") == "audio")
        wav, sr = sf.read(path, dtype="float32")
        f = processor.audio_processor([(wav, sr)])
        n = int(f["audio_attention_mask"][0].sum()) if "audio_attention_mask" in f else f["audio_input_features"].shape[1]
        feats.append(f["audio_input_features"][0, :n].clone())
    return feats


def _pad(feats):
    t = max(f.shape[0] for f in feats)
    x = torch.zeros(len(feats), t, feats[0].shape[1])
    mask = torch.zeros(len(feats), t, dtype=torch.bool)
    for i, f in enumerate(feats):
        x[i, : f.shape[0]] = f
        mask[i, : f.shape[0]] = True
    return x, mask


def ctc_words(text: str) -> str:
    """A written transcript as the words of the word-level CTC head (the leaderboard normaliser's form: lower
    case, no punctuation; numbers and money as it writes them)."""
    from molora.eval import normalize_english

    return normalize_english(text)


def set_cmvn(model, feats) -> None:
    """The encoder's global CMVN statistics from the training features (as the real encoder ships them)."""
    allf = torch.cat(feats)
    emb = model.audio_embed.encoder.encoder_embedding
    emb.global_mean.copy_(allf.mean(0))
    emb.global_invstd.copy_(1.0 / allf.std(0).clamp_min(1e-3))


def ctc_wer(enc, head, feats, texts, vocab) -> float:
    """Greedy CTC word error rate (%) of the encoder + head on held-out clips."""
    from molora.eval.wer import word_error_rate

    hyps = []
    was = enc.training
    enc.eval()
    with torch.no_grad():
        for i in range(0, len(feats), 50):
            x, mask = _pad(feats[i: i + 50])
            hidden, valid = enc(x, mask)
            ids = head(hidden).argmax(-1)
            for j in range(ids.shape[0]):
                words, prev = [], 0
                for t in ids[j, : int(valid[j].sum())].tolist():
                    if t != prev and t != 0:
                        words.append(vocab[t - 1])
                    prev = t
                hyps.append(" ".join(words))
    enc.train(was)
    return word_error_rate(texts, hyps)


def pretrain_ctc(model, feats, texts, vocab, steps: int, batch: int, lr: float, rng: random.Random, losses: list,
                 held_out=None):
    enc = model.audio_embed.encoder
    head = torch.nn.Linear(enc.config.hidden_size, len(vocab) + 1)
    index = {w: i + 1 for i, w in enumerate(vocab)}
    targets = [torch.tensor([index[w] for w in t.split()]) for t in texts]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in enc.parameters():
        p.requires_grad_(True)
    params = list(enc.parameters()) + list(head.parameters())
    opt = _optim(params, lr)
    enc.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * cosine(step, steps)
        idx = [rng.randrange(len(feats)) for _ in range(batch)]
        x, mask = _pad([feats[i] for i in idx])
        hidden, valid = enc(x, mask)
        logp = head(hidden).log_softmax(-1).transpose(0, 1)
        tg = [targets[i] for i in idx]
        loss = F.ctc_loss(logp, torch.cat(tg), valid.sum(1), torch.tensor([len(t) for t in tg]), zero_infinity=True)
        losses.append(_update(loss, params, opt))
        if step % 500 == 0 or step == steps - 1:
            wer = f" held-out WER {ctc_wer(enc, head, *held_out, vocab):.1f}%" if held_out else ""
            log(f"ctc step {step + 1}/{steps} loss {float(loss):.3f}{wer}")
    return head


def ocr_pages(seed: int):
    """An endless stream of fresh pages (documents and charts from a pretraining-only seed)."""
    from molora.synthetic.charts import draw_chart
    from molora.synthetic.documents import draw_document

    rng = random.Random(f"pretrain-ocr-{seed}")
    while True:
        yield draw_document(rng) if rng.random() < 0.5 else draw_chart(rng)


def ocr_batch(model, processor, head, pages, slots: int):
    """Dense reading loss of one batch of pages: every pooled cell of every sub-crop predicts its
    characters in order (``molora/synthetic/ocr.py``); returns (loss, accuracy on the character
    slots, cell exact-match rate)."""
    from molora.synthetic.ocr import cell_targets

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
    ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
    loss = (ce * weight.flatten()).sum() / weight.sum()
    with torch.no_grad():
        pred = logits.argmax(-1)
        chars = labels > 0
        acc = float((pred == labels)[chars].float().mean())
        exact = float((pred == labels).all(-1)[inked].float().mean())
    return loss, acc, exact


def pretrain_ocr(model, processor, steps: int, batch: int, lr: float, seed: int, losses: list, slots: int = 6):
    """Phase 2c: the vision tower learns to read with a dense per-cell character objective (a
    small MLP head on the pooled cells, thrown away afterwards)."""
    from molora.synthetic.ocr import NUM_CLASSES

    dim = model.config.vision.hidden_size
    head = torch.nn.Sequential(torch.nn.Linear(dim, 256), torch.nn.GELU(), torch.nn.Linear(256, slots * NUM_CLASSES))
    for p in model.parameters():
        p.requires_grad_(False)
    tower = list(model.image_embed.img_processor.parameters())
    for p in tower:
        p.requires_grad_(True)
    params = tower + list(head.parameters())
    opt = _optim(params, lr)
    stream, held = ocr_pages(seed), list(itertools.islice(ocr_pages(seed + 10_000), 32))
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * cosine(step, steps)
        loss, acc, exact = ocr_batch(model, processor, head, list(itertools.islice(stream, batch)), slots)
        losses.append(_update(loss, params, opt))
        if step % 250 == 0 or step == steps - 1:
            with torch.no_grad():
                _, hacc, hexact = ocr_batch(model, processor, head, held, slots)
            log(f"ocr step {step + 1}/{steps} loss {losses[-1]:.3f} train char acc {acc:.3f} "
                f"held-out char acc {hacc:.3f} cell exact {hexact:.3f}")


def lrs(encoder: float) -> dict:
    """Learning rates of the through-the-LM phases: only the encoder's differs between phases
    ("other" = the backbone, when it trains)."""
    return {"encoder": encoder, "projector": 3e-3, "lora": 3e-3, "other": 1e-3}


def through_lm(model, processor, samples, components, steps: int, batch: int, lrs: dict, rng: random.Random,
               losses: list, tag: str, train_lm: bool = False):
    """Train ``components`` through the LM on ``samples`` (next-token loss on the answers); the LM's
    own weights stay frozen unless ``train_lm`` (lr group "other")."""
    from molora.stages.collate import Collator
    from molora.stages.freeze import apply_plan, component_of
    from molora.stages.losses import lm_loss_sum
    from molora.stages.optim import lr_group

    apply_plan(model, components)
    if train_lm:
        for n, p in model.named_parameters():
            if component_of(n) == "llm":
                p.requires_grad_(True)
    groups: dict[str, list] = {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault(lr_group(n), []).append(p)
    opt = torch.optim.AdamW([{"params": ps, "lr": lrs[g], "base": lrs[g]} for g, ps in sorted(groups.items())],
                            betas=(0.9, 0.98), weight_decay=0.0, foreach=False)
    params = [p for ps in groups.values() for p in ps]
    collate = Collator(processor)
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = g["base"] * cosine(step, steps)
        b = collate([samples[rng.randrange(len(samples))] for _ in range(batch)])
        n = int((b["labels"][:, 1:] != -100).sum())
        loss = lm_loss_sum(model, b) / max(n, 1)
        losses.append(_update(loss, params, opt))
        if step % 50 == 0 or step == steps - 1:
            log(f"{tag} step {step + 1}/{steps} loss {losses[-1]:.3f}")


def save_parts(model, out: Path, seed: int, processor=None) -> dict:
    """Write the shipped parts (backbone, vision tower, conformer) to ``out/model.safetensors``;
    with ``processor`` also the whole model as it stands (temporary projectors and LoRAs included)
    to ``out/full/``, a checkpoint ``from_pretrained`` loads (for evaluating a phase's end state)."""
    from safetensors.torch import save_file

    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items() if SHIPPED.match(k)}
    save_file(sd, str(out / "model.safetensors"), metadata={"preset": "tiny", "seed": str(seed)})
    if processor is not None:
        model.save_pretrained(out / "full")
        processor.save_pretrained(out / "full")
    return sd


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="a few steps of every phase on the tiny corpora")
    ap.add_argument("--corpora-root", default=None, help="synthetic corpora cache root")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the shipped weights were made with 1)")
    ap.add_argument("--phases", default="lm,ctc,speech,vision,mixed",
                    help="comma-separated subset, in order; add \"ocr\" (dense reading) and / or \"crops\" (reading "
                         "small crops through the LM) before \"vision\"")
    ap.add_argument("--start-from", default=None, help="a model.safetensors to start from (e.g. an earlier run)")
    ap.add_argument("--text-only-backbone", action="store_true",
                    help="keep the backbone frozen in the speech / vision phases (default: it trains there too)")
    ap.add_argument("--tower-feature-norm", type=float, default=0.0,
                    help="ocr phase: first rescale the tower (exactly) so its pooled features have this mean norm "
                         "(e.g. 6)")
    ap.add_argument("--save-full", action="store_true",
                    help="after every phase also write the whole model (temporary projectors / LoRAs included) to "
                         "OUT/full, loadable with MoLoRAModel.from_pretrained")
    ap.add_argument("--corpus", choices=("quickstart", "everyday"), default="quickstart",
                    help="everyday: the everyday-English corpus too (text and speech) and a larger tokenizer")
    ap.add_argument("--tokenizer", default=None, help="a tokenizer.json to use instead of learning one (phase 0)")
    ap.add_argument("--vocab-size", type=int, default=None,
                    help="the learned tokenizer's size (default: 1024, or 6144 with --corpus everyday)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every phase's steps")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=N",
                    help="override one plan entry after --scale, e.g. --set vision_steps=4500 (repeatable)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    from molora import MoLoRAConfig, MoLoRAModel, MoLoRAProcessor
    from molora.data.manifest import read_manifest
    from molora.synthetic.build import build_corpora
    from molora.synthetic.sentences import _vocabulary
    from molora.presets import TINY_BPE_VOCAB
    from molora.tokenizer import TINY_BPE_FILE, load_tiny_tokenizer, train_bpe_tokenizer

    t0 = time.perf_counter()
    plan = dict(SMOKE if args.smoke else FULL)
    plan.update({k: max(1, int(round(v * args.scale))) for k, v in plan.items() if k.endswith("_steps")})
    for kv in args.set:
        key, _, value = kv.partition("=")
        if key not in plan or not value.isdigit():
            ap.error(f"--set {kv!r}: expected KEY=N with KEY one of {sorted(plan)}")
        plan[key] = int(value)
    phases = args.phases.split(",")
    train_lm = not args.text_only_backbone
    corpora = build_corpora(args.corpora_root, seed=args.seed, sizes="tiny" if args.smoke else "default", log=log)
    seed_all(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    convs = text_conversations(corpora, args.seed)
    everyday = None
    if args.corpus == "everyday":
        from molora.synthetic import everyday_corpus

        everyday = everyday_corpus.build(args.corpora_root, seed=args.seed, sizes="tiny" if args.smoke else "default",
                                         log=log)
        convs += [[{"role": "assistant", "content": s}]
                  for s in everyday_corpus.train_sentences(plan["everyday_text"], args.seed)]
    if args.tokenizer:
        log(f"phase 0: tokenizer from {args.tokenizer}")
        tokenizer = load_tiny_tokenizer(Path(args.tokenizer))
    else:
        log("phase 0: tokenizer (byte-level BPE on the corpora's text)")
        texts = [m["content"] for c in convs for m in c]
        if everyday is not None:
            texts += everyday_corpus.frequency_text()
        tokenizer = train_bpe_tokenizer(texts, args.vocab_size or (6144 if everyday else TINY_BPE_VOCAB))
    tokenizer.backend_tokenizer.save(str(out / TINY_BPE_FILE))
    config = MoLoRAConfig.preset("tiny")
    config.backbone.vocab_size = len(tokenizer)
    model = MoLoRAModel(config)
    processor = MoLoRAProcessor.from_config(config, tokenizer=tokenizer)
    rng = random.Random(args.seed)
    if args.start_from:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(args.start_from), strict=False)
    losses: dict[str, list] = {k: [] for k in ("lm", "lookup", "ctc", "ocr", "crops", "regions", "speech", "vision",
                                                 "mixed")}

    def save() -> dict:
        return save_parts(model, out, args.seed, processor if args.save_full else None)

    if "lm" in phases:
        log("phase 1: backbone (text LM)")
        pretrain_text(model, processor, convs, plan["lm_steps"], plan["lm_batch"], 3e-3, rng, losses["lm"])
        save()

    if "lookup" in phases:
        log("phase 1b: backbone learns look-up (text drills)")
        pretrain_text(model, processor, lookup_conversations(plan["lookup_rows"], args.seed), plan["lookup_steps"],
                      plan["lookup_batch"], 1e-3, rng, losses["lookup"], "lookup", answers_only=True, warm=100,
                      every=250)
        save()

    speech = read_manifest(corpora["speech"]["train"])
    if everyday is not None:
        speech += read_manifest(everyday["train"])
    vision_parts = ["vision_encoder", "vision_projector", "vision_lora"]
    speech_parts = ["audio_encoder", "speech_projector", "speech_lora"]

    def kept(rows: list, offset: int) -> tuple[list, list]:
        """A vision phase's rows and trained parts, with ``keep_drills`` % look-up drill rows and
        ``keep_speech`` % speech rows alongside (both 0 by default; the speech parts then train too)."""
        drills = drill_rows(plan["mixed_lookup_rows"], args.seed + offset) if plan["keep_drills"] else []
        rows = alongside(rows, [(drills, plan["keep_drills"]), (speech, plan["keep_speech"])])
        return rows, vision_parts + (speech_parts if plan["keep_speech"] else [])

    if "ctc" in phases:
        log("phase 2: conformer (word CTC)")
        feats = _audio_features(processor, speech)
        words = ctc_words if everyday is not None else (lambda t: t)  # everyday text is written: CTC on its words
        texts = [words(s.messages[-1]["content"]) for s in speech]
        vocab = sorted(set(_vocabulary()) | {w for t in texts for w in t.split()})
        set_cmvn(model, feats)
        dev = read_manifest(corpora["speech"]["dev"])
        held_out = (_audio_features(processor, dev), [words(s.messages[-1]["content"]) for s in dev])
        pretrain_ctc(model, feats, texts, vocab, plan["ctc_steps"], plan["ctc_batch"], 2e-3, rng, losses["ctc"],
                     held_out)
        save()

    if "speech" in phases:
        log("phase 3: conformer through the LM (temporary speech projector + LoRA)")
        through_lm(model, processor, speech, speech_parts, plan["speech_steps"],
                   plan["speech_batch"], lrs(encoder=3e-4), rng, losses["speech"], "speech", train_lm)
        save()

    if "ocr" in phases:
        log("phase 2c: vision tower reads (dense per-cell characters)")
        if args.tower_feature_norm:
            rescale_tower(model, args.tower_feature_norm, args.seed)
        pretrain_ocr(model, processor, plan["ocr_steps"], plan["ocr_batch"], 2e-3, args.seed, losses["ocr"])
        save()

    def small_images(name: str, make_rows, offset: int) -> None:
        """A phase on small images (crops, regions) through the LM, with the kept rows."""
        rows, parts = kept(make_rows(plan[f"{name}_rows"], args.seed), offset)
        through_lm(model, processor, rows, parts, plan[f"{name}_steps"], plan[f"{name}_batch"],
                   lrs(encoder=3e-4), rng, losses[name], name, train_lm)
        save()

    if "crops" in phases:
        log("phase 3b: reading small crops (one string / one line) through the LM")
        small_images("crops", reading_crops, 2)

    if "regions" in phases:
        log("phase 3c: questions on bands of a few text lines through the LM")
        small_images("regions", region_rows, 4)

    if "vision" in phases:
        log("phase 4: vision tower through the LM (temporary projector + LoRA)")
        vqa = read_manifest(corpora["documents"]["train"]) + read_manifest(corpora["charts"]["train"])
        vqa, parts = kept(vqa + reading_samples(plan["read_pages"], args.seed), 3)
        tower_lr = 3e-4 if "ocr" in phases or args.start_from else 2e-3  # 2e-3 only for a fresh tower
        through_lm(model, processor, vqa, parts, plan["vision_steps"], plan["vision_batch"], lrs(encoder=tower_lr),
                   rng, losses["vision"], "vision", train_lm)
        save()

    if "mixed" in phases:
        log("phase 5: speech and vision rows mixed in every batch (so neither path is forgotten)")
        rows = read_manifest(corpora["documents"]["train"]) + read_manifest(corpora["charts"]["train"]) + speech
        rows += reading_samples(plan["read_pages"], args.seed + 1)
        if "lookup" in phases or plan["keep_drills"]:  # keep the look-up drills, so the backbone does not forget them
            rows += drill_rows(plan["mixed_lookup_rows"], args.seed + 1)
        through_lm(model, processor, rows, speech_parts + vision_parts, plan["mixed_steps"], plan["mixed_batch"],
                   lrs(encoder=3e-4), rng, losses["mixed"], "mixed", train_lm)

    sd = save()
    info = {"preset": "tiny", "seed": args.seed, "smoke": args.smoke, "plan": plan, "phases": phases,
            "corpus": args.corpus, "vocab_size": len(tokenizer),
            "start_from": Path(args.start_from).name if args.start_from else None,
            "tensors": len(sd), "parameters": int(sum(v.numel() for v in sd.values())),
            "final_losses": {k: (round(float(np.mean(v[-20:])), 4) if v else None) for k, v in losses.items()
                             if k in phases},
            "seconds": round(time.perf_counter() - t0, 1)}
    (out / "pretrain.json").write_text(json.dumps(info, indent=1) + "\n")
    log(f"wrote {out / 'model.safetensors'} ({info['parameters']:,} parameters) in {info['seconds']} s")
    return info


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
