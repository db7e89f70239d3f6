"""The checks to run the day a GPU is lent (`make gpu-check`), in one prepared script.

    make gpu-check                               # DEVICE=cuda PRESET=phi4-multimodal: the real shapes
    make gpu-check DEVICE=cpu PRESET=small       # the same code on the CPU in a few minutes (the suite runs it)

On random weights at the preset's shapes (no download), in bf16:

1. **speech post-training step**: the speech projector and speech LoRA train (the report's
   post-training plan), AdamW, bf16 autocast, the padding-free path (rows packed by
   ``molora.packing.pack_batch``, as the trainer's collator sends them); the first step's loss beside
   the float32 loss of the same weights and batch (``loss_first`` / ``loss_fp32``); step time, peak memory,
   FLOPs of one step counted by ``torch.utils.flop_counter`` and MFU against the device's dense
   bf16 peak (H100 / H200 989 TFLOP/s, A100 312; ``--peak-tflops`` for others); the packed-attention
   kernel the execution plan chose (``packed_attention``: compiled FlexAttention on CUDA, ``rows``
   on the CPU) and, when it is not ``rows``, its loss and gradients beside ``rows``' on the same
   weights and batch (``packed_vs_rows``: relative differences, within a few bf16 roundings);
2. **FSDP2 and DDP training paths** (``parallel_training``), one process each under ``torchrun
   --nproc-per-node=1`` (nccl on CUDA, gloo on CPU; ``benchmarks/gpu_check_parallel.py``): the real
   trainer (``molora.stages.trainer.train``) on the speech post-training plan, from this model saved as a
   bf16 folder, on synthetic clips (bf16 autocast; 4 steps of 16 rows on a GPU, 2 of 1 row on the CPU; one
   checkpoint). Per path: ``step_s`` (median of the steps after the first, from the trainer's own step
   timing), ``peak_memory_bytes`` (``torch.cuda.max_memory_allocated`` on CUDA, the process's VmHWM on the
   CPU, with ``baseline_rss_bytes`` before the model loads; read after the steps and the checkpoint, and
   ``peak_memory_end_bytes`` after ``final/``), ``checkpoint_bytes`` (the checkpoint folder on disk: DCP
   shards for FSDP2), trainable and total parameter counts, the losses (the two paths' must agree), and
   ``bounds``: what a process may hold at its peak and what a checkpoint may weigh, from the shapes
   (``memory_bounds``);
3. **ASR RTFx** at batch 128: feature extraction + greedy generate + decode per batch, timed after a
   warm-up batch, as the Open ASR leaderboard times it (random weights rarely stop early, so every
   row generates ``max_new_tokens``: a worst case for the decode loop);
4. **bf16 logits vs transformers**: the same weights saved in the transformers-native layout and
   loaded by ``Phi4MultimodalForCausalLM`` + peft, one text, image and speech prompt each: largest
   logit difference relative to the logits' scale, and whether the greedy tokens agree.

Writes ``gpu_check.json`` (``--out``; ``$OUT`` when set, as on the lent machine) and prints a summary.
``--skip train,parallel,asr,logits`` leaves sections out (``make gpu-check SKIP=...``).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak(device, override):
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v * 1e12 for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def _clips(n, lo, hi, seed):
    from molora.synthetic.media import synth_audio

    rng = np.random.default_rng(seed)
    return [synth_audio(float(rng.uniform(lo, hi)), seed=i % 7) for i in range(n)]


def _processor(cfg):
    from molora import MoLoRAProcessor
    from molora.tokenizer import build_byte_tokenizer

    # the byte-level tokenizer: its ids are valid rows of every preset's embedding, so the check
    # needs no downloaded tokenizer (shapes and compute are the real ones; the text is not)
    return MoLoRAProcessor(cfg, tokenizer=build_byte_tokenizer())


def _asr_convs(clips, transcripts=None):
    from molora.prompts import ASR_PROMPT

    prompt = ASR_PROMPT
    convs = []
    for i, c in enumerate(clips):
        conv = [{"role": "user", "content": [{"type": "audio", "audio": (c, 16000)}, {"type": "text", "text": prompt}]}]
        if transcripts is not None:
            conv.append({"role": "assistant", "content": transcripts[i]})
        convs.append(conv)
    return convs


def build_model(preset, device):
    from molora import MoLoRAConfig, MoLoRAModel

    cfg = MoLoRAConfig.preset(preset)
    torch.manual_seed(0)
    with torch.device(device):
        model = MoLoRAModel(cfg)
    with torch.no_grad():  # non-zero adapters, so routing and the LoRA paths compute something
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 1e-3)
    return model.to(torch.bfloat16), cfg


def train_step(model, cfg, device, args) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from molora.packing import pack_batch
    from molora.stages.freeze import apply_plan

    apply_plan(model, ["speech_projector", "speech_lora"])
    proc = _processor(cfg)
    words = "the quick brown fox jumps over the lazy dog while seven red ships sail past".split()
    rng = np.random.default_rng(1)
    clips = _clips(args.train_batch, *args.train_seconds, seed=2)
    texts = [" ".join(rng.choice(words, size=max(3, int(len(c) / 16000 * 2.5)))) for c in clips]
    batch = pack_batch(proc(_asr_convs(clips, texts), return_labels=True))
    batch = {k: v.to(device) for k, v in batch.items()}
    tokens = int(batch["input_ids"].shape[1])
    model.train()
    torch.manual_seed(5)  # the same LoRA dropout masks for the reference and the first step
    with torch.no_grad():  # the reference: the same bf16 weights, exactly, computed in float32
        loss_fp32 = model.float()(**batch, return_logits=False).loss.item()
    model.to(torch.bfloat16)  # bf16 -> fp32 -> bf16 gives back the same weights
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:  # trainable weights and their optimiser state in float32, compute in bf16
        p.data = p.data.float()
    opt = torch.optim.AdamW(trainable, lr=1e-4, fused=device.type == "cuda")

    kernel = model.plan(batch["input_ids"], cu_seqlens=batch["cu_seqlens"], labels=batch["labels"],
                        return_logits=False).packed_backend

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batch, return_logits=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    torch.manual_seed(5)
    loss_first = step().item()  # the first step (a warm-up): the weights the reference saw
    for _ in range(args.warmup - 1):
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.steps):
        _sync(device)
        t0 = time.perf_counter()
        loss = step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    peak = _peak(device, args.peak_tflops)
    out = {"rows": args.train_batch, "tokens": tokens, "audio_seconds": round(sum(len(c) for c in clips) / 16000, 1),
           "step_seconds": round(step_s, 4), "steps_timed": args.steps, "loss": round(loss.item(), 4),
           "loss_first": round(loss_first, 5), "loss_fp32": round(loss_fp32, 5),
           "flops_per_step": flops, "tflops_per_s": round(flops / step_s / 1e12, 2),
           "mfu": None if peak is None else round(flops / step_s / peak, 4),
           "peak_tflops_assumed": None if peak is None else peak / 1e12,
           "trainable_parameters": sum(p.numel() for p in trainable),
           "padding_free": True, "packed_attention": kernel,
           "packed_vs_rows": None if kernel == "rows" else kernel_vs_rows(model, batch, trainable, device)}
    if device.type == "cuda":
        out["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
    for p in trainable:
        p.data = p.data.to(torch.bfloat16)
        p.grad = None
    return out


def kernel_vs_rows(model, batch, trainable, device) -> dict:
    """The loss and gradients of the plan's packed-attention kernel beside the ``rows`` kernel's: the
    same weights, batch and dropout masks, bf16 autocast; relative to the ``rows`` values."""
    from molora.plan import FastPaths

    def loss_and_grads(switches):
        model.fast_paths = switches
        torch.manual_seed(7)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batch, return_logits=False).loss
        grads = torch.autograd.grad(loss, trainable, allow_unused=True)
        return loss.item(), torch.cat([(torch.zeros_like(p) if g is None else g).float().flatten()
                                       for p, g in zip(trainable, grads)])

    chosen, rows = loss_and_grads(FastPaths()), loss_and_grads(FastPaths(packed_attention="rows"))
    model.fast_paths = FastPaths()
    return {"loss_rel_diff": abs(chosen[0] - rows[0]) / abs(rows[0]),
            "grad_rel_diff": float((chosen[1] - rows[1]).norm() / rows[1].norm())}


def parallel_paths(model, cfg, device, args, workdir: Path) -> dict:
    """The trainer's FSDP2 and DDP paths, one process each (``benchmarks/gpu_check_parallel.py`` under
    ``torchrun --nproc-per-node=1``), from the same bf16 starting folder and synthetic clips; the
    model held here goes to the CPU meanwhile (the GPU is the run's)."""
    import soundfile as sf


    start = workdir / "start"
    model.save_pretrained(start)
    _processor(cfg).save_pretrained(start)
    data = workdir / "data"
    data.mkdir()
    words = "the quick brown fox jumps over the lazy dog while seven red ships sail past".split()
    rng = np.random.default_rng(4)
    rows = []
    clips = _clips(2 * args.parallel_batch, *args.train_seconds, seed=5)  # two steps' rows
    for i, c in enumerate(clips):
        sf.write(data / f"clip{i}.wav", c, 16000)
        rows.append({"audio": f"clip{i}.wav", "text": " ".join(rng.choice(words, size=max(3, int(len(c) / 16000 * 2.5))))})
    manifest = data / "asr.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = _processor(cfg)
    lengths = sorted((int(proc(_asr_convs([c], [r["text"]]), return_labels=True)["input_ids"].shape[1])
                      for c, r in zip(clips, rows)), reverse=True)
    tokens = sum(lengths[: args.parallel_batch])  # the longest rows one step can hold: at least any step's tokens
    here = next(model.parameters()).device
    model.cpu()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    env = dict(os.environ)
    if device.type == "cpu":  # the two paths compute alike (oneDNN / MKL take the same kernels each run)
        env["MKL_CBWR"] = "AUTO,STRICT"
    out = {}
    for path in ("fsdp2", "ddp"):
        with socket.socket() as s:  # a free port for the rendezvous
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        report = workdir / f"{path}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=1", "--master-addr=127.0.0.1",
               f"--master-port={port}", str(Path(__file__).with_name("gpu_check_parallel.py")), "--path", path,
               "--model", str(start), "--data", str(manifest), "--run-dir", str(workdir / f"run-{path}"),
               "--out", str(report), "--batch", str(args.parallel_batch), "--steps", str(args.parallel_steps),
               "--save-every", str(args.parallel_save_every)]
        r = subprocess.run(cmd + (["--cpu"] if device.type == "cpu" else []), capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"the {path} path failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        out[path] = json.loads(report.read_text())
    model.to(here)
    out["max_abs_loss_difference"] = max(abs(a - b) for a, b in zip(out["fsdp2"]["losses"], out["ddp"]["losses"]))
    out["bounds"] = memory_bounds(cfg, sum(p.numel() for p in model.parameters()), out["ddp"]["trainable_parameters"],
                                  tokens)
    return out


def memory_bounds(cfg, total: int, trainable: int, tokens: int) -> dict:
    """What one training process may hold at its peak, from the shapes (bytes):

    - the model in bf16 (``2 * total``: the starting folder is bf16 and the trainer keeps its dtype);
    - what trains beside it, counted in float32 however it is stored: gradients and AdamW's two
      moments (``3 * 4 * trainable``; the weights are in the model already);
    - activations kept for backward: per decoder layer and token at most ``6 * hidden + 3 *
      intermediate`` float32 values (the residual stream, the norms' inputs, q / k / v / attention
      output, and the MLP's gate, up and product), for ``tokens`` tokens: the longest rows a step can
      hold together (the frozen audio encoder runs without keeping activations: nothing before it
      trains).

    ``checkpoint_bytes``: a checkpoint of the trained tensors (weights + two AdamW moments, float32 at
    most) and 1 MiB for the scheduler, RNG and trainer state."""
    bb = cfg.backbone
    activations = bb.num_hidden_layers * tokens * (6 * bb.hidden_size + 3 * bb.intermediate_size) * 4
    return {"model_bf16_bytes": 2 * total, "training_state_bytes": 12 * trainable, "tokens": tokens,
            "activation_bytes": activations, "peak_bytes": 2 * total + 12 * trainable + activations,
            "checkpoint_bytes": 12 * trainable + 2 ** 20, "model_fp32_bytes": 4 * total}


@torch.no_grad()
def asr_rtfx(model, cfg, device, args) -> dict:
    model.eval()
    proc = _processor(cfg)
    clips = _clips(args.asr_batch, *args.asr_seconds, seed=3)

    def run(batch_clips):
        _sync(device)
        t0 = time.perf_counter()
        batch = proc(_asr_convs(batch_clips))
        batch = {k: v.to(device) for k, v in batch.items()}
        ids = model.generate(**batch, max_new_tokens=args.asr_new_tokens, eos_token_ids=[])
        proc.batch_decode(ids.cpu())
        _sync(device)
        return time.perf_counter() - t0, int(ids.shape[1])

    run(clips[: max(1, len(clips) // 8)])  # warm-up
    seconds, new_tokens = run(clips)
    audio = sum(len(c) for c in clips) / 16000
    return {"batch": len(clips), "audio_seconds": round(audio, 1), "seconds": round(seconds, 3),
            "rtfx": round(audio / seconds, 2), "new_tokens_per_row": new_tokens}


@torch.no_grad()
def logits_vs_transformers(model, cfg, device, workdir: Path) -> dict:
    from peft import PeftModel
    from transformers import Phi4MultimodalForCausalLM

    # peft 0.21 itself reads transformers' deprecated ``is_gradient_checkpointing`` when it wraps a model
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

    from molora.synthetic.media import drawn_image, synth_audio

    model.eval()
    proc = _processor(cfg)
    prompts = {
        "text": [{"role": "user", "content": "Write one sentence about the sea."}],
        "image": [{"role": "user", "content": [{"type": "image", "image": drawn_image(640, 480, 1)},
                                               {"type": "text", "text": "What is in the picture?"}]}],
        "speech": _asr_convs([synth_audio(6.0, seed=2)])[0],
    }
    adapter = {"text": None, "image": "vision", "speech": "speech"}
    ours = {}
    for name, conv in prompts.items():
        batch = {k: v.to(device) for k, v in proc(conv).items()}
        ours[name] = (model(**batch).logits.float().cpu(), model.generate(**batch, max_new_tokens=8).cpu(), batch)
    model.save_pretrained(workdir / "native", layout="phi4_multimodal")
    model.cpu()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    ref = Phi4MultimodalForCausalLM.from_pretrained(str(workdir / "native"), dtype=torch.bfloat16).to(device).eval()
    peft = PeftModel.from_pretrained(ref, str(workdir / "native" / "vision-lora"), adapter_name="vision")
    peft.load_adapter(str(workdir / "native" / "speech-lora"), adapter_name="speech")
    out = {}
    for name, (logits, tokens, batch) in ours.items():
        if adapter[name] is None:
            with peft.disable_adapter():
                theirs = peft(**batch).logits.float().cpu()
                their_tokens = _greedy(peft, batch)
        else:
            peft.set_adapter(adapter[name])
            theirs = peft(**batch).logits.float().cpu()
            their_tokens = _greedy(peft, batch)
        scale = float(theirs.abs().max())
        out[name] = {"max_abs_diff": round(float((logits - theirs).abs().max()), 5), "logit_scale": round(scale, 3),
                     "relative": round(float((logits - theirs).abs().max()) / max(scale, 1e-6), 6),
                     "same_greedy_tokens": tokens[0].tolist() == their_tokens}
    del peft, ref
    return out


def _greedy(peft_model, batch, n=8) -> list[int]:
    ids, mask = batch["input_ids"], batch["attention_mask"]
    media = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    out = []
    for _ in range(n):
        logits = peft_model(input_ids=ids, attention_mask=mask, **media).logits[:, -1]
        nxt = logits.argmax(-1)
        out.append(int(nxt))
        ids = torch.cat([ids, nxt[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default="phi4-multimodal")
    ap.add_argument("--out", default=None, help="JSON path (default $OUT/gpu_check.json or ./gpu_check.json)")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: train,parallel,asr,logits")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    # the GPU runs the sizes the report trains and evaluates at; the CPU a few seconds of each
    args.warmup = 1
    # the FSDP2 / DDP paths: one checkpoint (after step 1 on the CPU, step 2 on a GPU); step time: the
    # median of the steps after the first
    args.parallel_steps, args.parallel_save_every = (2, 1) if cpu else (4, 2)
    args.parallel_batch = 1 if cpu else args.train_batch  # rows per step (the CPU: the paths, not the size)
    args.steps = args.steps or (1 if cpu else 5)
    args.train_batch, args.train_seconds = (2, (1.5, 2.5)) if cpu else (16, (10.0, 25.0))
    args.asr_batch, args.asr_seconds, args.asr_new_tokens = (128, (0.6, 1.2), 4) if cpu else (128, (3.0, 20.0), 128)
    skip = set(filter(None, args.skip.split(",")))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with DEVICE=cpu PRESET=small for the CPU version", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    model, cfg = build_model(args.preset, device)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "preset": args.preset, "torch": torch.__version__, "dtype": "bfloat16"}
    if "train" not in skip:
        result["speech_post_training_step"] = train_step(model, cfg, device, args)
        print("train step:", result["speech_post_training_step"], flush=True)
    if "parallel" not in skip:
        with tempfile.TemporaryDirectory() as tmp:
            result["parallel_training"] = parallel_paths(model, cfg, device, args, Path(tmp))
        print("FSDP2 / DDP paths:", result["parallel_training"], flush=True)
    if "asr" not in skip:
        result["asr"] = asr_rtfx(model, cfg, device, args)
        print("ASR:", result["asr"], flush=True)
    if "logits" not in skip:
        with tempfile.TemporaryDirectory() as tmp:
            result["logits_vs_transformers"] = logits_vs_transformers(model, cfg, device, Path(tmp))
        print("logits vs transformers:", result["logits_vs_transformers"], flush=True)
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out) if args.out else Path(os.environ.get("OUT", ".")) / "gpu_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out} ({result['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
