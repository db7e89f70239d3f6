"""Full-size check, not in CI: a random Phi-4-multimodal checkpoint in the official layout at the real
shapes (5.57 B parameters, bfloat16), read by molora, converted by molora, and compared with
transformers + peft on the converted checkpoint.

    .venv/bin/python scripts/validate_full_size.py [--workdir DIR] [--tokens 16] [--threads N] [--keep]

Each step runs in its own process, so only one model is in memory at a time and each peak RSS is
the step's own:

  fp32       float32 at full width with 2 decoder layers / 2 vision layers / 2 conformer blocks: molora
             against transformers + peft, logits to float32 rounding (bfloat16 at full depth cannot show
             exactness: its rounding alone moves the logits)
  write      config.json (the official format: no vision tower description, ``vision_lora`` /
             ``speech_lora`` sections) + 3 shards + ``model.safetensors.index.json``, keys as in the official
             repository (``model.layers.N.self_attn.qkv_proj.base_layer.weight``, ``...lora_A.vision.weight``,
             ``model.embed_tokens_extend.image_embed...``); random bf16 tensors made and written one shard at
             a time (never the whole model in memory)
  molora     ``MoLoRAModel.from_pretrained`` (memory-mapped, bfloat16 kept): load time and RSS; for a text,
             an image, a speech and an image+speech prompt: one greedy generation (the prompt's
             last-position logits from its first step, the tokens, the time)
  convert    ``molora convert`` to the transformers-native layout + PEFT folders, then every tensor of the
             source compared with its converted copy (key by key, through the layout mapping)
  reference  transformers' ``Phi4MultimodalForCausalLM`` + peft (``vision-lora``, ``speech-lora``) on the
             converted checkpoint, bfloat16: the same prompts, the adapter the reference table routes to;
             then each adapter prompt's logits again with the adapter merged into the weights: the
             reference's own bfloat16 spread, the yardstick for molora's difference
  compare    logits difference, greedy tokens, times, peak RSS -> ``--json`` and a markdown table

Both checkpoints exist during ``convert`` (~23 GB of disk); everything written is deleted at the end
unless ``--keep``. Fits in 24 GB of RAM; ``--preset phi4-14b-multimodal`` (17.6 B parameters, 35 GB in
bfloat16) needs ~73 GB of disk and ~58 GB of memory (a 64 GB machine) (the script prints both figures first). Every step's
peak RSS is reported against the checkpoint's size; ``convert`` streams, so its peak is a few shards. Prompts are token ids (no tokenizer is downloaded); media
placeholders are expanded by molora's processor, whose features feed both models.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
N_SHARDS = 3  # as in the official repository
# Phi-4 chat tokens: <|system|> 200022, <|user|> 200021, <|assistant|> 200019, <|end|> 200020
USER, ASSISTANT, END = 200021, 200019, 200020
STEPS = ("fp32", "write", "molora", "convert", "reference", "compare")


def rss_gb() -> float:
    """This process's peak RSS (VmHWM starts afresh at exec; ru_maxrss would carry the parent's)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def current_rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


# -- step 1: the official checkpoint ------------------------------------------------------------------

def official_shapes(preset: str) -> tuple[dict, dict[str, tuple]]:
    """(official config.json, key -> shape) of Phi-4-multimodal-instruct (or another preset's shapes,
    for a dry run), from molora's meta model."""
    from molora import MoLoRAConfig, MoLoRAModel
    from molora.checkpoint_layouts import to_phi4mm_config, to_phi4mm_key

    cfg = MoLoRAConfig.preset(preset)
    with torch.device("meta"):
        model = MoLoRAModel(cfg)
    config = to_phi4mm_config(cfg)
    if preset == "phi4-multimodal":  # the official file has no molora section (the vision tower comes from
        del config["molora"]         # the weights); a dry run's shapes need it (its own token ids)
    config["torch_dtype"] = "bfloat16"
    return config, {to_phi4mm_key(k): tuple(v.shape) for k, v in model.state_dict().items()}


def random_tensor(key: str, shape: tuple, g: torch.Generator, dtype=torch.bfloat16) -> torch.Tensor:
    module = key.rsplit(".", 1)[0]
    if key.endswith("global_invstd"):
        return torch.ones(shape, dtype=dtype)
    if key.endswith("global_mean"):
        return torch.zeros(shape, dtype=dtype)
    if "norm" in module.rsplit(".", 1)[-1]:  # RMSNorm / LayerNorm: weight 1, bias 0
        return (torch.ones if key.endswith("weight") else torch.zeros)(shape, dtype=dtype)
    return torch.empty(shape, dtype=dtype).normal_(0.0, 0.02, generator=g)


def step_write(ckpt: Path, preset: str) -> dict:
    from safetensors.torch import save_file

    config, shapes = official_shapes(preset)
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text(json.dumps(config, indent=2))
    keys = sorted(shapes)
    total = sum(torch.Size(s).numel() * 2 for s in shapes.values())
    shards, current, size = [], [], 0
    for k in keys:  # ~equal shards in key order
        current.append(k)
        size += torch.Size(shapes[k]).numel() * 2
        if size >= total / N_SHARDS and len(shards) < N_SHARDS - 1:
            shards.append(current)
            current, size = [], 0
    shards.append(current)
    g = torch.Generator().manual_seed(0)
    weight_map = {}
    for i, names in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: random_tensor(k, shapes[k], g) for k in names}, str(ckpt / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in names})
    (ckpt / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return {"parameters": sum(torch.Size(s).numel() for s in shapes.values()), "bytes": total,
            "shards": len(shards), "tensors": len(shapes)}


def requirements(preset: str) -> dict:
    """What a run needs, from the shapes: disk for the source and the converted copy (both exist during
    convert); memory for the largest step, transformers + peft, scaled from the 5.57 B run (17.9 GB peak
    for an 11.15 GB checkpoint: the whole bfloat16 model, load transients, the prompts' activations)."""
    _, shapes = official_shapes(preset)
    ckpt = sum(torch.Size(s).numel() * 2 for s in shapes.values()) / 1e9
    return {"checkpoint_gb": ckpt, "disk_gb": 2 * ckpt * 1.02 + 1, "memory_gb": ckpt * 17.9 / 11.15 + 1}


# -- prompts ----------------------------------------------------------------------------------------------

def prompts(cfg) -> dict[str, tuple[dict, str | None]]:
    """input type -> (batch, adapter of the reference table) for a model of config ``cfg``. Text ids are
    fixed pseudo-random ids."""
    from molora.encoders.audio_features import AudioFeatureExtractor
    from molora.encoders.image_transform import ImageTransform
    from molora.synthetic.media import drawn_image, synth_audio

    vocab = cfg.backbone.vocab_size
    user, end, assistant = (USER, END, ASSISTANT) if vocab > USER else (258, 260, 259)  # the tiny tokenizer's
    g = torch.Generator().manual_seed(1)
    question = torch.randint(min(1000, vocab // 2), min(100000, vocab - 20), (24,), generator=g).tolist()
    image = ImageTransform(cfg.vision)([drawn_image(448, 448, seed=3)])
    audio = AudioFeatureExtractor(cfg.audio)([synth_audio(3.0, seed=2)], sampling_rate=16000)
    n_img, n_aud = int(image["num_img_tokens"][0]), int(audio["audio_embed_sizes"][0])
    img_ids, aud_ids = [cfg.backbone.image_token_id] * n_img, [cfg.backbone.audio_token_id] * n_aud
    media_img = {k: image[k] for k in ("image_pixel_values", "image_sizes", "image_attention_mask")}
    media_aud = {k: audio[k] for k in ("audio_input_features", "audio_embed_sizes")}

    def batch(ids, **media):
        ids = torch.tensor([[user, *ids, end, assistant]])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), **media}

    return {"text": (batch(question), None),
            "image": (batch(img_ids + question[:8], **media_img), "vision"),
            "speech": (batch(aud_ids + question[:6], **media_aud), "speech"),
            "image+speech": (batch(img_ids + aud_ids + question[:4], **media_img, **media_aud), "vision")}


def run_prompts(generate, tokens: int, preset: str) -> dict:
    """For every prompt, one greedy generation: the prompt's last-position logits (the first step's,
    float32, saved by the caller), the tokens and the time (prefill included)."""
    out = {}
    from molora import MoLoRAConfig

    for kind, (batch, adapter) in prompts(MoLoRAConfig.preset(preset)).items():
        batch = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in batch.items()}
        t0 = time.perf_counter()
        with torch.no_grad():
            logits, ids = generate(batch, adapter, tokens)
        seconds = time.perf_counter() - t0
        out[kind] = {"logits": logits.float(), "tokens": ids[0].tolist(), "generate_s": round(seconds, 2),
                     "prompt_tokens": int(batch["input_ids"].shape[1])}
        print(f"  {kind}: {out[kind]['prompt_tokens']} prompt tokens, {tokens} tokens in {seconds:.1f} s", flush=True)
    return out


def _media_ids(preset: str):
    from molora import MoLoRAConfig

    b = MoLoRAConfig.preset(preset).backbone
    return [b.image_token_id, b.audio_token_id]


def _save_outputs(results: dict, workdir: Path, side: str) -> dict:
    torch.save({k: v["logits"] for k, v in results.items()}, workdir / f"logits_{side}.pt")
    return {k: {kk: vv for kk, vv in v.items() if kk != "logits"} for k, v in results.items()}


# -- step 0: float32 at full width, few layers --------------------------------------------------------------

def step_fp32(workdir: Path, preset: str) -> dict:
    """molora and transformers + peft in float32 at full width with 2 decoder layers, 2 vision layers and 2
    conformer blocks (random weights, transformers-native layout): the prompts' logits agree to float32
    rounding. bfloat16 at full depth cannot show that: its rounding alone moves the logits."""
    from peft import PeftModel
    from transformers import Phi4MultimodalForCausalLM

    from molora import MoLoRAConfig, MoLoRAModel

    cfg = MoLoRAConfig.preset(preset).replace(backbone={"num_hidden_layers": 2}, vision={"num_hidden_layers": 2},
                                              audio={"num_blocks": 2})
    g = torch.Generator().manual_seed(0)
    model = MoLoRAModel(cfg)
    model.load_state_dict({k: random_tensor(k, tuple(v.shape), g, torch.float32) for k, v in model.state_dict().items()})
    d = workdir / "fp32"
    model.save_pretrained(d, layout="phi4_multimodal")
    del model
    batches = prompts(cfg)
    ours = MoLoRAModel.from_pretrained(str(d))
    with torch.no_grad():
        mine = {kind: ours(**b, logits_to_keep=1).logits[0, -1] for kind, (b, _) in batches.items()}
    del ours
    base = Phi4MultimodalForCausalLM.from_pretrained(str(d)).eval()
    _eager_vision(base)
    ref = PeftModel.from_pretrained(base, str(d / "vision-lora"), adapter_name="vision")
    ref.load_adapter(str(d / "speech-lora"), adapter_name="speech")
    ref.eval()
    out = {}
    for kind, (b, adapter) in batches.items():
        with torch.no_grad():
            theirs = _routed(ref, adapter, lambda: ref(**b, logits_to_keep=1).logits[0, -1])
        out[kind] = {"max_abs_logit_diff": float((mine[kind] - theirs).abs().max()),
                     "logit_scale": round(float(theirs.abs().max()), 3)}
        print(f"  {kind}: float32 max |molora - reference| = {out[kind]['max_abs_logit_diff']:.2e}", flush=True)
    shutil.rmtree(d)
    return {"prompts": out}


def _eager_vision(model) -> None:
    for m in model.modules():  # transformers' SDPA vision path runs causal attention when no patch is padded
        if type(m).__name__ == "Phi4MultimodalVisionModel":  # (not SigLIP); its eager path is bidirectional
            m.config._attn_implementation = "eager"


def _routed(model, adapter, fn):
    """``fn()`` on a peft model with the reference table's adapter (None: adapters off)."""
    if adapter is None:
        with model.disable_adapter():
            return fn()
    model.set_adapter(adapter)
    return fn()


# -- step 2: molora ----------------------------------------------------------------------------------------

def step_molora(ckpt: Path, workdir: Path, tokens: int, preset: str) -> dict:
    from molora import MoLoRAModel

    t0 = time.perf_counter()
    model = MoLoRAModel.from_pretrained(str(ckpt))
    load_s, load_rss = time.perf_counter() - t0, current_rss_gb()
    print(f"  loaded in {load_s:.1f} s, RSS {load_rss:.2f} GB, dtype {model.dtype}, training={model.training}", flush=True)
    assert model.dtype == torch.bfloat16 and not model.training
    media = _media_ids(preset)

    def generate(batch, _adapter, n):  # molora routes by input type itself
        first = []

        def suppress(_history, scores):  # both sides: a generated placeholder id would need media
            if not first:
                first.append(scores[0].clone())  # the prompt's logits, before any processing
            scores[:, media] = float("-inf")
            return scores

        ids = model.generate(**batch, max_new_tokens=n, eos_token_ids=[], logits_processor=suppress)
        return first[0], ids

    results = run_prompts(generate, tokens, preset)
    return {"load_s": round(load_s, 2), "rss_after_load_gb": round(load_rss, 2),
            "prompts": _save_outputs(results, workdir, "molora"), "peak_rss_gb": round(rss_gb(), 2)}


# -- step 3: convert ---------------------------------------------------------------------------------------

def step_convert(ckpt: Path, native: Path) -> dict:
    from safetensors import safe_open

    from molora.convert import convert
    from molora.checkpoint_layouts import from_phi4mm_key, to_transformers_state_dict
    from molora.peft_adapters import adapter_state_dicts
    from molora.weight_files import weight_files

    t0 = time.perf_counter()
    summary = convert(str(ckpt), native, layout="phi4_multimodal")
    convert_s, convert_rss = time.perf_counter() - t0, rss_gb()
    print(f"  converted in {convert_s:.1f} s: {len(summary['model_files'])} files, processor "
          f"{summary['processor_note']}", flush=True)
    # every source tensor against its converted copy: names through the layout mapping, values bit for bit
    source = {}
    for f, keys in weight_files(ckpt).items():  # the files the index names, as the loader reads them
        with safe_open(str(f), framework="pt") as fh:
            source.update({from_phi4mm_key(k): (f, k) for k in (fh.keys() if keys is None else keys)})
    names = {mk: mk for mk in source}
    where = {nk: (native, mk) for nk, mk in to_transformers_state_dict(names).items()}
    for adapter, keys in adapter_state_dicts(names).items():
        where.update({(adapter, pk): (native / f"{adapter}-lora", mk) for pk, mk in keys.items()})
    index_file = native / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())["weight_map"] if index_file.exists() else {}
    compared = 0
    for key, (folder, mk) in where.items():  # one tensor at a time: nothing stays mapped
        f, k = source[mk]
        target = folder / (index.get(key, "model.safetensors") if folder == native else "adapter_model.safetensors")
        with safe_open(str(f), framework="pt") as a, safe_open(str(target), framework="pt") as b:
            x, y = a.get_tensor(k), b.get_tensor(key if folder == native else key[1])
            if x.dtype != y.dtype or not torch.equal(x, y):
                raise SystemExit(f"convert changed {k} -> {key}")
        del x, y
        compared += 1
    assert compared == len(source), (compared, len(source))
    return {"convert_s": round(convert_s, 2), "convert_peak_rss_gb": round(convert_rss, 2),
            "tensors_compared": compared, "bit_exact": True, "model_files": summary["model_files"],
            "processor_files": summary["processor_files"], "peak_rss_gb": round(rss_gb(), 2)}


# -- step 4: transformers + peft ----------------------------------------------------------------------------

def step_reference(native: Path, workdir: Path, tokens: int, preset: str) -> dict:
    from peft import PeftModel
    from transformers import Phi4MultimodalForCausalLM

    t0 = time.perf_counter()
    base = Phi4MultimodalForCausalLM.from_pretrained(str(native), dtype=torch.bfloat16).eval()
    _eager_vision(base)
    model = PeftModel.from_pretrained(base, str(native / "vision-lora"), adapter_name="vision")
    model.load_adapter(str(native / "speech-lora"), adapter_name="speech")
    model.eval()
    load_s, load_rss = time.perf_counter() - t0, current_rss_gb()
    print(f"  loaded in {load_s:.1f} s, RSS {load_rss:.2f} GB", flush=True)
    media = _media_ids(preset)

    def generate(batch, adapter, n):  # the reference table's adapter for the prompt's input type
        def run():
            out = model.generate(**batch, max_new_tokens=n, min_new_tokens=n, do_sample=False, suppress_tokens=media,
                                 output_logits=True, return_dict_in_generate=True)
            return out.logits[0][0], out.sequences[:, batch["input_ids"].shape[1]:]

        return _routed(model, adapter, run)

    results = run_prompts(generate, tokens, preset)
    torch.save(_merged_logits(model, preset), workdir / "logits_reference_merged.pt")
    return {"load_s": round(load_s, 2), "rss_after_load_gb": round(load_rss, 2),
            "prompts": _save_outputs(results, workdir, "reference"), "peak_rss_gb": round(rss_gb(), 2)}


def _merged_logits(model, preset: str) -> dict:
    """The reference's own bfloat16 spread: each adapter prompt's logits again with the adapter merged
    into the base weights (peft's merge_adapter, in place: no extra memory): the same model, rounded
    differently."""
    from molora import MoLoRAConfig

    out = {}
    for kind, (batch, adapter) in prompts(MoLoRAConfig.preset(preset)).items():
        if adapter is None:
            continue
        batch = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in batch.items()}
        model.set_adapter(adapter)
        model.merge_adapter()
        with torch.no_grad():
            out[kind] = model(**batch, logits_to_keep=1).logits[0, -1].float()
        model.unmerge_adapter()
    return out


# -- step 5: compare ----------------------------------------------------------------------------------------

def step_compare(workdir: Path, out_json: Path) -> dict:
    res = {s: json.loads((workdir / f"{s}.json").read_text()) for s in STEPS[:-1]}
    a, b, merged = (torch.load(workdir / f"logits_{name}.pt", weights_only=True)
                    for name in ("molora", "reference", "reference_merged"))
    rows = {}
    for kind in a:
        m, r = res["molora"]["prompts"][kind], res["reference"]["prompts"][kind]
        diff = (a[kind] - b[kind]).abs()
        same = next((i for i, (x, y) in enumerate(zip(m["tokens"], r["tokens"])) if x != y), len(m["tokens"]))
        spread = (merged[kind] - b[kind]).abs().max() if kind in merged else torch.tensor(0.0)
        rows[kind] = {"prompt_tokens": m["prompt_tokens"], "max_abs_logit_diff": round(float(diff.max()), 4),
                      "reference_bf16_spread": round(float(spread), 4),
                      "fp32_2_layers_max_abs_diff": res["fp32"]["prompts"][kind]["max_abs_logit_diff"],
                      "logit_scale": round(float(b[kind].abs().max()), 3),
                      "same_argmax": bool(a[kind].argmax() == b[kind].argmax()),
                      "same_greedy_tokens": same, "of_tokens": len(m["tokens"]),
                      "molora_generate_s": m["generate_s"], "reference_generate_s": r["generate_s"]}
    summary = {"prompts": rows, "write": res["write"],
               "molora": {k: v for k, v in res["molora"].items() if k != "prompts"},
               "convert": res["convert"],
               "reference": {k: v for k, v in res["reference"].items() if k != "prompts"},
               "step_seconds": {s: res[s]["step_s"] for s in STEPS[:-1]},
               "step_peak_rss_gb": {s: res[s]["peak_rss_gb"] for s in STEPS[:-1]},
               "machine": {"cpus": os.cpu_count(), "torch": torch.__version__,
                           "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}}
    out_json.write_text(json.dumps(summary, indent=1) + "\n")
    print(markdown(summary))
    return summary


def markdown(s: dict) -> str:
    lines = ["| prompt | prompt tokens | bf16: max abs logit diff (largest logit) | bf16: reference merged vs "
             "unmerged | fp32, 2 layers: max abs diff | same argmax | same greedy tokens | generate s, molora / "
             "reference |", "|---|---|---|---|---|---|---|---|"]
    for kind, r in s["prompts"].items():
        lines.append(f"| {kind} | {r['prompt_tokens']} | {r['max_abs_logit_diff']} ({r['logit_scale']}) | "
                     f"{r['reference_bf16_spread']} | {r['fp32_2_layers_max_abs_diff']:.1e} | {r['same_argmax']} | "
                     f"{r['same_greedy_tokens']} / {r['of_tokens']} | "
                     f"{r['molora_generate_s']} / {r['reference_generate_s']} |")
    m, c, r, w = s["molora"], s["convert"], s["reference"], s["write"]
    lines += ["", f"- checkpoint: {w['parameters'] / 1e9:.2f} B parameters, {w['bytes'] / 1e9:.2f} GB bf16, "
                  f"{w['shards']} shards, {w['tensors']} tensors (written in {s['step_seconds']['write']:.0f} s)",
              f"- molora load: {m['load_s']} s, RSS after load {m['rss_after_load_gb']} GB, peak {m['peak_rss_gb']} GB",
              f"- convert to phi4_multimodal: {c['convert_s']} s, {c['tensors_compared']} tensors bit-exact, "
              f"peak RSS {c['convert_peak_rss_gb']} GB (convert alone), {c['peak_rss_gb']} GB (with the check)",
              f"- transformers + peft load: {r['load_s']} s, RSS after load {r['rss_after_load_gb']} GB, "
              f"peak {r['peak_rss_gb']} GB",
              "- steps (s): " + ", ".join(f"{k} {v:.0f}" for k, v in s["step_seconds"].items()),
              "- peak RSS per step against the checkpoint's " f"{w['bytes'] / 2**30:.2f} GiB: " + ", ".join(
                  f"{k} {v:.2f} GiB ({v / (w['bytes'] / 2**30):.2f}x)" for k, v in s["step_peak_rss_gb"].items())]
    return "\n".join(lines)


# -- driver -----------------------------------------------------------------------------------------------

def child(step: str, workdir: Path, tokens: int, preset: str) -> None:
    t0 = time.perf_counter()
    ckpt, native = workdir / "phi4mm", workdir / "phi4_multimodal"
    if step == "fp32":
        out = step_fp32(workdir, preset)
    elif step == "write":
        out = step_write(ckpt, preset)
    elif step == "molora":
        out = step_molora(ckpt, workdir, tokens, preset)
    elif step == "convert":
        out = step_convert(ckpt, native)
        shutil.rmtree(ckpt)  # the reference reads the converted copy only
    else:
        out = step_reference(native, workdir, tokens, preset)
    out["step_s"] = round(time.perf_counter() - t0, 1)
    out.setdefault("peak_rss_gb", round(rss_gb(), 2))
    (workdir / f"{step}.json").write_text(json.dumps(out, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "full_size"))
    ap.add_argument("--tokens", type=int, default=16, help="greedy tokens per prompt")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results_full_size.json"))
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints")
    ap.add_argument("--preset", default="phi4-multimodal",
                    help="other shapes: phi4-14b-multimodal (35 GB in bfloat16: ~73 GB of disk, ~58 GB of memory), "
                         "or small / tiny for a dry run of the script")
    ap.add_argument("--step", choices=STEPS[:-1], help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads or os.cpu_count() or 2)
    workdir = Path(args.workdir)
    if args.step:
        child(args.step, workdir, args.tokens, args.preset)
        return
    if workdir.exists():
        raise SystemExit(f"{workdir} exists; remove it or pass another --workdir")
    workdir.mkdir(parents=True)
    need = requirements(args.preset)
    print(f"{args.preset}: checkpoint {need['checkpoint_gb']:.1f} GB (bfloat16); needs {need['disk_gb']:.0f} GB of disk "
          f"(source and converted copy during convert) and ~{need['memory_gb']:.0f} GB of memory (transformers + peft "
          f"step: the whole model in memory; molora maps it; convert streams a few shards)", flush=True)
    free = shutil.disk_usage(workdir).free / 1e9
    if free < need["disk_gb"]:
        shutil.rmtree(workdir, ignore_errors=True)
        raise SystemExit(f"needs ~{need['disk_gb']:.0f} GB of free disk in {workdir}, {free:.0f} GB free")
    t0 = time.perf_counter()
    try:
        for step in STEPS[:-1]:
            print(f"[{time.perf_counter() - t0:6.0f} s] {step}", flush=True)
            subprocess.run([sys.executable, __file__, "--step", step, "--workdir", str(workdir), "--tokens",
                            str(args.tokens), "--threads", str(args.threads), "--preset", args.preset], check=True)
        step_compare(workdir, Path(args.json))
        print(f"total {time.perf_counter() - t0:.0f} s; wrote {args.json}")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
