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
``docs/tiny-pretraining.md``. The phases themselves live in ``molora/pretraining/``.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from molora.pretraining import (FULL, SMOKE, alongside, audio_features, ctc_words, drill_rows, lm_phase_lrs, log,
                                pretrain_ctc, pretrain_ocr, pretrain_text, reading_crops, reading_samples, region_rows,
                                rescale_tower, save_parts, set_cmvn, text_conversations, through_lm)
from molora.stages.trainer import seed_everything
from molora.synthetic.lookup import lookup_conversations

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "molora" / "weights" / "tiny"


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
    seed_everything(args.seed)
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
        feats = audio_features(processor, speech)
        words = ctc_words if everyday is not None else (lambda t: t)  # everyday text is written: CTC on its words
        texts = [words(s.messages[-1]["content"]) for s in speech]
        vocab = sorted(set(_vocabulary()) | {w for t in texts for w in t.split()})
        set_cmvn(model, feats)
        dev = read_manifest(corpora["speech"]["dev"])
        held_out = (audio_features(processor, dev), [words(s.messages[-1]["content"]) for s in dev])
        pretrain_ctc(model, feats, texts, vocab, plan["ctc_steps"], plan["ctc_batch"], 2e-3, rng, losses["ctc"],
                     held_out)
        save()

    if "speech" in phases:
        log("phase 3: conformer through the LM (temporary speech projector + LoRA)")
        through_lm(model, processor, speech, speech_parts, plan["speech_steps"],
                   plan["speech_batch"], lm_phase_lrs(encoder=3e-4), rng, losses["speech"], "speech", train_lm)
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
                   lm_phase_lrs(encoder=3e-4), rng, losses[name], name, train_lm)
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
        through_lm(model, processor, vqa, parts, plan["vision_steps"], plan["vision_batch"],
                   lm_phase_lrs(encoder=tower_lr), rng, losses["vision"], "vision", train_lm)
        save()

    if "mixed" in phases:
        log("phase 5: speech and vision rows mixed in every batch (so neither path is forgotten)")
        rows = read_manifest(corpora["documents"]["train"]) + read_manifest(corpora["charts"]["train"]) + speech
        rows += reading_samples(plan["read_pages"], args.seed + 1)
        if "lookup" in phases or plan["keep_drills"]:  # keep the look-up drills, so the backbone does not forget them
            rows += drill_rows(plan["mixed_lookup_rows"], args.seed + 1)
        through_lm(model, processor, rows, speech_parts + vision_parts, plan["mixed_steps"], plan["mixed_batch"],
                   lm_phase_lrs(encoder=3e-4), rng, losses["mixed"], "mixed", train_lm)

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
