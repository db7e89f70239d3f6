"""Model-core benchmark: molora vs the reference stack (transformers' Phi-4-multimodal
processors, and Phi4MultimodalForCausalLM + peft), same inputs and weights, in one run.

    .venv/bin/python benchmarks/bench_core.py [--preset small] [--repeats 5]

Cases (each side runs in its own subprocess so peak RSS is its own):
  image    HD transform throughput (images/s) vs Phi4MultimodalImageProcessor
  audio    log-mel throughput (clips/s) vs Phi4MultimodalFeatureExtractor
  train    one forward+backward+AdamW step of a mixed text/image/speech/image+speech batch (LoRAs and
           projectors trainable): molora routes per row in one pass; the reference must split
           the batch by modality (one pass per adapter / audio-projector choice)
  asr, generate1, generate16   greedy generation on the preset (see _decode)
  vocab_bf16, vocab_fp32   greedy generation (16 tokens, batch 1) at the real vocabulary (200,064,
           tied embedding, hidden 1536) from a bfloat16 checkpoint, loaded in bfloat16 / float32 on
           both sides: molora vs transformers' Phi4MultimodalForCausalLM.generate; the tokens must
           agree. The sides alternate over 3 rounds; each side's fastest run counts.
Prints each figure, the ratio molora / reference (higher is better) and peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _images(n=16):
    from molora.synthetic.media import drawn_image

    sizes = [(448, 448), (1024, 768), (300, 1200), (1600, 400), (640, 480), (2000, 1500), (224, 224), (800, 800)]
    return [drawn_image(*sizes[i % len(sizes)], seed=i) for i in range(n)]


def _clips(n=16):
    from molora.synthetic.media import synth_audio

    return [synth_audio(2.0 + (i % 5) * 1.5, seed=i) for i in range(n)]


def _timeit(fn, repeats, every: bool = False):
    fn()  # warm-up
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return t if every else float(np.median(t))


def run_case(case: str, impl: str, preset: str, repeats: int, workdir: str, threads: int = 0) -> dict:
    torch.set_num_threads(threads or os.cpu_count() or 2)
    # both sides: subnormal floats in backward made CPU step times swing 5x between runs
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    from molora import MoLoRAConfig

    cfg = MoLoRAConfig.preset(preset)
    if case == "image":
        imgs = _images()
        if impl == "molora":
            from molora.encoders.image_transform import ImageTransform

            real = MoLoRAConfig.preset("phi4-multimodal").vision
            f = ImageTransform(real)
            sec = _timeit(lambda: f(imgs), repeats)
        else:
            from transformers import Phi4MultimodalImageProcessor

            f = Phi4MultimodalImageProcessor()
            sec = _timeit(lambda: f(imgs, return_tensors="pt"), repeats)
        return {"value": len(imgs) / sec, "unit": "images/s"}
    if case == "audio":
        clips = _clips()
        if impl == "molora":
            from molora.encoders.audio_features import AudioFeatureExtractor

            f = AudioFeatureExtractor(cfg.audio)
            sec = _timeit(lambda: f(clips, sampling_rate=16000), repeats)
        else:
            from transformers import Phi4MultimodalFeatureExtractor

            f = Phi4MultimodalFeatureExtractor()
            sec = _timeit(lambda: f(clips, sampling_rate=16000, return_tensors="pt"), repeats)
        return {"value": len(clips) / sec, "unit": "clips/s"}
    if case == "train":
        return _train(impl, cfg, repeats, Path(workdir))
    if case in ("asr", "generate1", "generate16"):
        return _decode(case, impl, cfg, repeats, Path(workdir))
    if case in VOCAB_CASES:
        return _generate_vocab(impl, preset, VOCAB_CASES[case], repeats, Path(workdir))
    raise ValueError(case)


# -- greedy generation at the real vocabulary ------------------------------------------------------------

VOCAB_CASES = {"vocab_bf16": torch.bfloat16, "vocab_fp32": torch.float32}
VOCAB_TOKENS = 16
VOCAB_ROUNDS = 3


def vocab_config(preset: str):
    """The preset's model with Phi-4-mini's vocabulary (200,064, tied) and a 1536-wide decoder."""
    from molora import MoLoRAConfig

    return MoLoRAConfig.preset(preset).replace(backbone={"vocab_size": 200064, "hidden_size": 1536,
                                                         "intermediate_size": 4096, "num_attention_heads": 12,
                                                         "num_key_value_heads": 4})


def _prepare_vocab_weights(preset: str, workdir: Path) -> None:
    """One bfloat16 checkpoint (random weights), in molora's layout and transformers' (same tensors)."""
    from molora import MoLoRAModel

    torch.manual_seed(0)
    model = MoLoRAModel(vocab_config(preset)).to(torch.bfloat16)
    model.save_pretrained(workdir / "vocab")
    model.save_pretrained(workdir / "vocab" / "native", layout="phi4_multimodal")


def _generate_vocab(impl, preset, dtype, repeats, workdir):
    from molora import MoLoRAProcessor

    cfg = vocab_config(preset)
    proc = MoLoRAProcessor.from_config(cfg)
    batch = proc([[{"role": "user", "content": "tell me a story about the number seven"}]])
    media_ids = [cfg.backbone.image_token_id, cfg.backbone.audio_token_id]
    if impl == "molora":
        from molora import MoLoRAModel

        model = MoLoRAModel.from_pretrained(str(workdir / "vocab"), dtype=dtype)

        def suppress(_history, scores):  # the reference cannot decode past a generated placeholder
            scores[:, media_ids] = float("-inf")
            return scores

        def run():
            return model.generate(**batch, max_new_tokens=VOCAB_TOKENS, eos_token_ids=[], logits_processor=suppress)
    else:
        from transformers import Phi4MultimodalForCausalLM

        model = Phi4MultimodalForCausalLM.from_pretrained(str(workdir / "vocab" / "native"), dtype=dtype).eval()

        def run():
            out = model.generate(**batch, max_new_tokens=VOCAB_TOKENS, min_new_tokens=VOCAB_TOKENS, do_sample=False,
                                 suppress_tokens=media_ids)
            return out[:, batch["input_ids"].shape[1]:]
    with torch.no_grad():
        tokens = run()
        times = _timeit(run, repeats, every=True)
    assert tokens.shape[1] == VOCAB_TOKENS
    return {"value": VOCAB_TOKENS / min(times), "unit": "tok/s", "times": times,
            "dtype": str(dtype).removeprefix("torch."), "tokens": tokens[0].tolist()}


NEW_TOKENS = 24


def _load_pair(impl, ckpt):
    if impl == "molora":
        from molora import MoLoRAModel

        model = MoLoRAModel.from_pretrained(str(ckpt)).eval()
        model.set_merged_inference(True)
        return model
    from peft import PeftModel
    from transformers import Phi4MultimodalForCausalLM

    base = Phi4MultimodalForCausalLM.from_pretrained(str(ckpt / "native")).eval()
    ref = PeftModel.from_pretrained(base, str(ckpt / "native" / "vision-lora"), adapter_name="vision")
    ref.load_adapter(str(ckpt / "native" / "speech-lora"), adapter_name="speech")
    return ref.eval()


def _decode(case, impl, cfg, repeats, workdir):
    """ASR: feature extraction + generate + decode per batch, as the leaderboard times it (each side
    its own feature extractor); chat: generate + decode. Both sides emit exactly NEW_TOKENS tokens."""
    from molora import MoLoRAProcessor
    from molora.prompts import ASR_PROMPT
    from molora.synthetic.speech import speak

    proc = MoLoRAProcessor.from_config(cfg)
    model = _load_pair(impl, workdir / "weights")
    if case == "asr":
        texts = ["the red cat sat on the mat", "seven blue birds", "one two three four five six",
                 "green trees grow near the river", "a small dog runs fast", "nine yellow stars"] * 3
        clips = [speak(t, rate=150 + 5 * i) for i, t in enumerate(texts)][:16]
        convs = [[{"role": "user", "content": [{"type": "audio", "audio": (c, 16000)},
                                               {"type": "text", "text": ASR_PROMPT}]}]
                 for c in clips]
        audio_s = sum(len(c) for c in clips) / 16000
    else:
        n = 1 if case == "generate1" else 16
        convs = [[{"role": "user", "content": f"tell me a story about the number {i}"}] for i in range(n)]
    if impl == "reference" and case == "asr":
        from transformers import Phi4MultimodalFeatureExtractor

        fe = Phi4MultimodalFeatureExtractor()
    torch.manual_seed(0)
    media_ids = [cfg.backbone.image_token_id, cfg.backbone.audio_token_id]

    def suppress(_history, scores):
        scores[:, media_ids] = float("-inf")
        return scores

    @torch.no_grad()
    def run():
        batch = proc(convs)
        # random weights may emit a media placeholder id, which the reference cannot decode past:
        # both sides suppress those two ids
        if impl == "molora":
            ids = model.generate(**batch, max_new_tokens=NEW_TOKENS, eos_token_ids=[], logits_processor=suppress)
        else:
            if case == "asr":  # the reference's own log-mel front end
                feats = fe([c[0]["content"][0]["audio"][0] for c in convs], sampling_rate=16000,
                           return_tensors="pt")
                batch.update(feats)
            model.set_adapter("speech") if case == "asr" else None
            kwargs = {k: v for k, v in batch.items()}
            if case == "asr":
                out = model.generate(**kwargs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                     suppress_tokens=media_ids)
            else:
                with model.disable_adapter():
                    out = model.generate(**kwargs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                         do_sample=False, suppress_tokens=media_ids)
            ids = out[:, batch["input_ids"].shape[1]:]
        assert ids.shape[1] == NEW_TOKENS
        return proc.batch_decode(ids)

    sec = _timeit(run, repeats)
    if case == "asr":
        return {"value": audio_s / sec, "unit": "RTFx", "batch": len(convs)}
    return {"value": len(convs) * NEW_TOKENS / sec, "unit": "tok/s", "batch": len(convs)}


def _mixed_batch(proc):
    from molora.prompts import ASR_PROMPT
    from molora.synthetic.media import drawn_image, synth_audio

    def user(parts, answer):
        content = []
        for p in parts:
            content.append({"type": "text", "text": p} if isinstance(p, str) else
                           {"type": "audio", "audio": p} if isinstance(p, tuple) else {"type": "image", "image": p})
        return [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]

    convs = []
    for i in range(2):
        convs += [
            user(["tell me a short story about a cat number %d" % i], "once upon a time there was a cat"),
            user([drawn_image(300, 200, i), "what is drawn?"], "boxes and a number"),
            user([(synth_audio(3.0, seed=i), 16000), ASR_PROMPT], "hello world"),
            user([drawn_image(200, 300, 9 + i), (synth_audio(2.0, seed=5 + i), 16000)], "the answer is four"),
        ]
    return proc(convs, return_labels=True)


def _train(impl, cfg, repeats, workdir):
    from molora import MoLoRAModel, MoLoRAProcessor
    from molora.loss import count_label_tokens

    ckpt = workdir / "weights"
    proc = MoLoRAProcessor.from_config(cfg)
    batch = _mixed_batch(proc)
    if impl == "molora":
        model = MoLoRAModel.from_pretrained(str(ckpt)).train()
        for p in model.audio_embed.audio_projection.parameters():
            p.requires_grad_(True)
        for p in model.image_embed.img_projection.parameters():
            p.requires_grad_(True)
        for p in list(model.audio_embed.encoder.parameters()) + list(model.image_embed.img_processor.parameters()):
            p.requires_grad_(False)

        opt = _optimizer(model)

        def step():  # as molora's trainer calls it (stages/losses.py): loss only, no logits tensor
            model.zero_grad(set_to_none=True)
            model(**batch, return_logits=False).loss.backward()
            opt.step()
    else:
        from peft import PeftModel
        from transformers import Phi4MultimodalForCausalLM

        base = Phi4MultimodalForCausalLM.from_pretrained(str(ckpt / "native"))
        ref = PeftModel.from_pretrained(base, str(ckpt / "native" / "vision-lora"), adapter_name="vision",
                                        is_trainable=True)
        ref.load_adapter(str(ckpt / "native" / "speech-lora"), adapter_name="speech", is_trainable=True)
        ref.train()
        for n, p in ref.named_parameters():
            p.requires_grad_(".lora_" in n or "img_projection" in n or "proj_for_" in n)
        from molora.adapters.router import Router

        router = Router(cfg)
        types = router.row_types(batch["input_ids"])
        groups = {}
        for i, t in enumerate(types):
            groups.setdefault(t, []).append(i)
        subs = {t: _sub_batch(batch, rows, cfg) for t, rows in groups.items()}
        n_tok = int(count_label_tokens(batch["labels"]))
        for n, p in ref.named_parameters():
            if ".lora_" in n:
                p.requires_grad_(True)
        opt = _optimizer(ref)

        def step():
            ref.zero_grad(set_to_none=True)
            for t, sub in subs.items():
                adapter = router.adapter(t)
                n_sub = int(count_label_tokens(sub["labels"]))
                if adapter is None:
                    with ref.disable_adapter():
                        loss = ref(**sub).loss
                else:
                    ref.set_adapter(adapter)
                    for n, p in ref.named_parameters():  # set_adapter freezes the others; keep all trainable
                        if ".lora_" in n:
                            p.requires_grad_(True)
                    loss = ref(**sub).loss
                if loss.requires_grad:  # a text-only group touches no trainable weight
                    (loss * n_sub / n_tok).backward()
            opt.step()
    sec = _timeit(step, repeats)
    rows = batch["input_ids"].shape[0]
    return {"value": rows / sec, "unit": "samples/s", "step_s": sec}


def _optimizer(model):
    """The same optimizer on both sides: molora's trainer's AdamW settings (stages/optim.py)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, foreach=False)


def _sub_batch(batch, rows, cfg):
    """Rows of a processor batch with their own images/audios (media are flat over the batch)."""
    ids = batch["input_ids"]
    n_img = [int((r == cfg.backbone.image_token_id).any()) for r in ids]  # at most one image per row here
    n_aud = [int((r == cfg.backbone.audio_token_id).any()) for r in ids]
    img_idx = [sum(n_img[:r]) for r in rows if n_img[r]]
    aud_idx = [sum(n_aud[:r]) for r in rows if n_aud[r]]
    sub = {k: batch[k][rows] for k in ("input_ids", "attention_mask", "labels")}
    if img_idx:
        for k in ("image_pixel_values", "image_sizes", "image_attention_mask"):
            sub[k] = batch[k][img_idx]
    if aud_idx:
        for k in ("audio_input_features", "audio_embed_sizes", "audio_attention_mask"):
            if k in batch:
                sub[k] = batch[k][aud_idx]
    return sub


def _prepare_weights(preset: str, workdir: Path) -> None:
    from molora import MoLoRAConfig, MoLoRAModel

    torch.manual_seed(0)
    model = MoLoRAModel(MoLoRAConfig.preset(preset))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.02)
    model.save_pretrained(workdir / "weights", layout="molora")
    model.save_pretrained(workdir / "weights" / "native", layout="phi4_multimodal")


def _ratios(results: dict) -> dict:
    """benchmarks/results.json: molora over reference, higher is better (memory: lower is better)."""
    r = {k: v["speedup"] for k, v in results.items()}
    out = {"train_step_speedup": r.get("train"), "asr_rtfx_speedup": r.get("asr"),
           "preprocess_speedup": min(r["image"], r["audio"]) if "image" in r and "audio" in r else None,
           "generation_speedup": min(r["generate1"], r["generate16"]) if "generate1" in r and "generate16" in r
           else None,
           "peak_memory_ratio": results.get("train", {}).get("peak_memory_ratio"),
           "generation_vocab_speedup": min(r["vocab_bf16"], r["vocab_fp32"]) if "vocab_bf16" in r and "vocab_fp32" in r
           else None}
    out["detail"] = {k: round(v, 3) for k, v in r.items()}
    return out


def _peak_rss_mb() -> float:
    """This process's own peak RSS. ``VmHWM`` belongs to the address space, so it starts afresh at
    exec; ``ru_maxrss`` survives exec, and a child would report its parent's peak (the parent writes
    the weights) instead of its own."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", default="image,audio,train,asr,generate1,generate16,vocab_bf16,vocab_fp32")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per side (0: all cores)")
    ap.add_argument("--keep-weights", metavar="DIR", help="prepare (once) and reuse the weights in DIR")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results_core.json"))
    ap.add_argument("--child", nargs=3, metavar=("CASE", "IMPL", "WORKDIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        case, impl, workdir = args.child
        res = run_case(case, impl, args.preset, args.repeats, workdir, args.threads)
        res["peak_rss_mb"] = _peak_rss_mb()
        print("RESULT " + json.dumps(res))
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        wd = args.keep_weights or tmp
        cases = args.cases.split(",")
        if any(c in ("train", "asr", "generate1", "generate16") for c in cases) and not (Path(wd) / "weights").exists():
            _prepare_weights(args.preset, Path(wd))
        if any(c in VOCAB_CASES for c in cases) and not (Path(wd) / "vocab").exists():
            _prepare_vocab_weights(args.preset, Path(wd))
        print(f"{'case':8s} {'molora':>14s} {'reference':>14s} {'speedup':>8s} {'RSS molora/ref (MB)':>22s}")
        for case in args.cases.split(","):
            row = {}
            # the vocabulary cases alternate the two sides over VOCAB_ROUNDS rounds and keep each side's
            # fastest run: on a shared machine a side's process can land on a busy stretch
            for impl in ("molora", "reference") * (VOCAB_ROUNDS if case in VOCAB_CASES else 1):
                out = subprocess.run([sys.executable, __file__, "--preset", args.preset, "--repeats",
                                      str(args.repeats), "--threads", str(args.threads), "--child", case, impl, wd],
                                     capture_output=True, text=True, check=False)
                line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
                if not line:
                    print(out.stdout[-2000:], out.stderr[-4000:])
                    raise SystemExit(f"{case}/{impl} failed")
                res = json.loads(line[0][7:])
                if impl in row:  # a later round: all times kept, the best one counts
                    res["times"] = row[impl]["times"] + res["times"]
                    res["value"] = VOCAB_TOKENS / min(res["times"])
                    res["peak_rss_mb"] = max(res["peak_rss_mb"], row[impl]["peak_rss_mb"])
                row[impl] = res
            m, r = row["molora"], row["reference"]
            row["speedup"] = m["value"] / r["value"]
            if "tokens" in m:
                row["same_tokens"] = m["tokens"] == r["tokens"]
            row["peak_memory_ratio"] = m["peak_rss_mb"] / r["peak_rss_mb"]
            results[case] = row
            print(f"{case:8s} {m['value']:10.2f} {m['unit']:>3s} {r['value']:10.2f} {'':3s} {row['speedup']:7.2f}x "
                  f"{m['peak_rss_mb']:9.0f} / {r['peak_rss_mb']:.0f}"
                  + ("" if "same_tokens" not in row else f"   same tokens: {row['same_tokens']}"))
    meta = {"preset": args.preset, "torch": torch.__version__, "threads": args.threads or os.cpu_count(),
            "cpus": os.cpu_count(), "machine": os.uname().machine}
    old = json.loads(Path(args.json).read_text()) if Path(args.json).exists() else {}
    if old.get("meta", {}).get("preset") == args.preset:  # a run of some cases keeps the others
        results = {**old.get("results", {}), **results}
    Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    summary = _ratios(results)
    Path(args.json).with_name("results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
