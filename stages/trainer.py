"""The trainer loop: one loop for every stage, on accelerate's process state, from one CPU to
many GPUs.

Data parallelism is explicit: every process takes its shard of each global batch (the same
global batch whatever the number of processes), losses are summed over tokens and divided by
the token count of the whole global batch, and gradients are averaged across processes after
backward. One process and N processes therefore take the same steps. Stage specifics (loss,
data kinds, default freeze plans) live in ``stage_<name>.py``.
"""
from __future__ import annotations

import json
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from molora.errors import ConfigError, RunError

from . import stage_registry
from .checkpointing import load_checkpoint, save_checkpoint, set_rng_state
from .freeze import apply_plan
from .optim import build_optimizer, build_scheduler, rebase_groups, step_lrs
from .recipe import Recipe
from .run_messages import print_run_summary, substep_banner
from .run_state import (RUN_FILE, check_output_dir, finished_run, plan_run, run_identity, save_final,
                        start_run, write_json_atomic)


@dataclass
class Context:
    recipe: Recipe
    reference_params: dict[str, torch.Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Distributed:
    """The few collective operations the loop needs, over accelerate's process state."""

    def __init__(self, cpu: bool = False):
        from accelerate import PartialState

        self.state = PartialState(cpu=cpu)
        self.rank, self.world = self.state.process_index, self.state.num_processes
        self.device = self.state.device

    def barrier(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Mean of every gradient over processes, in flat buckets (one collective per ~32 MB)."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        bucket, size = [], 0
        for g in grads + [None]:
            if g is not None:
                bucket.append(g)
                size += g.numel()
            if bucket and (g is None or size > 8_000_000):
                flat = torch.cat([b.reshape(-1) for b in bucket])
                torch.distributed.all_reduce(flat)
                flat /= self.world
                off = 0
                for b in bucket:
                    b.copy_(flat[off: off + b.numel()].view_as(b))
                    off += b.numel()
                bucket, size = [], 0
        for p, g in zip(params, grads):
            p.grad = g


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(spec: dict, seed: int):
    """Model from a recipe's ``model`` section: {preset} | {path} | {preset, backbone, vision}."""
    from molora import MoLoRAConfig, MoLoRAModel, MoLoRAProcessor

    seed_everything(seed)
    if spec.get("path"):
        model = MoLoRAModel.from_pretrained(spec["path"])
        processor = MoLoRAProcessor.from_pretrained(spec["path"])
        return model, processor
    config = MoLoRAConfig.preset(spec.get("preset", "tiny"))
    if spec.get("config"):
        config = config.replace(**spec["config"])
    if spec.get("backbone") or spec.get("vision"):
        from molora.assemble import assemble

        model = assemble(config, backbone=spec.get("backbone"), vision=spec.get("vision"), seed=seed)
        config = model.config
    else:
        model = MoLoRAModel(config)
    return model, MoLoRAProcessor.from_config(config, tokenizer=None)


def load_samples(data: dict, key: str, skipped: list[dict] | None = None):
    """``data.<key>`` is a JSONL manifest path, or a datasets spec
    ``{path, split, config, kind, limit, streaming, ...columns}`` (hub id, saved dataset or files).
    Manifest lines too long to read are appended to ``skipped``; no usable row is an error naming
    the source."""
    from .hf_datasets import read_hf_dataset
    from .manifest import read_manifest

    spec = data[key]
    if isinstance(spec, dict):
        spec = dict(spec)
        if "path" not in spec:
            raise ConfigError("a datasets spec needs 'path' (hub id, saved dataset dir or data files)", f"data.{key}")
        path = spec.pop("path")
        spec.setdefault("split", "train")
        samples = list(read_hf_dataset(path, **spec))
        where = f"data.{key} ({path})"
    else:
        lost: list[dict] = []
        samples = read_manifest(spec, allow_outside_root=bool(data.get("allow_outside_root")), skipped=lost,
                                outside_root_hint="set data.allow_outside_root=true to permit this")
        where = str(Path(spec).expanduser().resolve())
        if skipped is not None:
            skipped.extend(lost)
        if not samples and lost:
            raise ConfigError(f"no usable rows: all {len(lost)} line(s) are too long to read", where)
    if not samples:
        raise ConfigError("no rows: the data is empty", where)
    return samples


def _precision(name: str, device: torch.device) -> torch.dtype | None:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _move(batch, device):
    if isinstance(batch, dict):
        return {k: _move(v, device) for k, v in batch.items()}
    return batch.to(device) if torch.is_tensor(batch) else batch


class MetricsLog:
    """metrics.jsonl (+ TensorBoard when available) on rank 0; a resumed run drops rows past its step."""

    def __init__(self, out: Path, enabled: bool, resume_step: int | None):
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            keep = [l for l in self.path.read_text().splitlines() if l and json.loads(l).get("step", 0) <= resume_step]
            self.path.write_text("".join(l + "\n" for l in keep))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step)
        except Exception:  # tensorboard missing: JSONL only
            self.tb = None

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, row["step"])

    def close(self):
        if self.tb is not None:
            self.tb.close()


def train(recipe: Recipe, output_dir: str | Path, *, resume: bool = False, strict: bool | None = None,
          cpu: bool = False, progress: bool = True, overwrite: bool = False, resume_anyway: bool = False) -> dict:
    """Run ``recipe`` into ``output_dir``. A folder that already holds a run needs ``resume`` (which
    checks that the recipe, data and model match the checkpoint's; ``resume_anyway`` accepts a change)
    or ``overwrite``; resuming a finished run trains nothing and returns its summary."""
    from .collate import Collator
    from .sampler import LengthGroupedBatches

    out = Path(output_dir)
    if not recipe.data.get("train"):
        raise ConfigError("the recipe has no training data: pass data.train=PATH", recipe.name)
    check_output_dir(out)
    # what to do with the output folder, decided before anything loads or is written
    plan = plan_run(out, run_identity(recipe), resume=resume or resume_anyway, overwrite=overwrite,
                    resume_anyway=resume_anyway)
    dist = Distributed(cpu=cpu)
    is_main = dist.rank == 0
    if plan.mode == "finished":
        return finished_run(out, plan, is_main)
    stage = stage_registry.get(recipe.stage)
    strict = recipe.strict if strict is None else strict
    unreadable: list[dict] = []
    samples = load_samples(recipe.data, "train", unreadable)  # a bad line stops here, before the model loads
    bad_kind = sorted({s.kind for s in samples} - set(stage.DATA_KINDS))
    if bad_kind:
        raise ConfigError(f"stage {recipe.stage!r} takes {stage.DATA_KINDS} rows, the manifest has {bad_kind}",
                          recipe.data["train"])
    start_run(recipe, out, dist, plan)

    model, processor = build_model(recipe.model, recipe.seed)
    model.to(dist.device)
    t = recipe.training
    sharded = dist.world > 1 and (t.parallel == "fsdp2" or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true")
    model.split_frozen_rows = t.split_frozen_rows and not sharded
    if recipe.training.activation_checkpointing:
        model.enable_activation_checkpointing()
    global_batch = t.micro_batch_size * t.grad_accum * dist.world
    sampler = LengthGroupedBatches([s.length for s in samples], global_batch, recipe.seed,
                                   group_by_length=t.group_by_length)
    collator = Collator(processor, strict=strict, spec_augment=t.spec_augment,
                        max_tokens=recipe.data.get("max_tokens"))
    collator.skipped.extend(unreadable)
    paired = getattr(stage, "PAIRED", False)
    collate = collator.collate_preference if paired else collator
    dtype = _precision(t.precision, dist.device)
    scaler = torch.amp.GradScaler(dist.device.type) if dtype == torch.float16 else None

    # parameters any sub-step trains: these are what checkpoints hold
    union = sorted({c for s in recipe.substeps for c in s.train})
    apply_plan(model, union)
    saved_names = [n for n, p in model.named_parameters() if p.requires_grad]
    if sharded:
        if paired or t.eval_every:
            raise ConfigError("FSDP2 runs support the LM stages without periodic evaluation for now (DPO's "
                              "reference pass and rank-0 evaluation need unsharded weights): use training.parallel=dp",
                              recipe.name)
        from .sharding import shard_model

        shard_model(model, dist)
    ctx = Context(recipe)
    if paired:  # the DPO reference: every trainable tensor as built, before any step (a resumed run
        # rebuilds the same model from the same seed / path, so it gets the same reference)
        ctx.reference_params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    ckpt_root = out / "checkpoints"
    start_step, loaded = 0, None
    if plan.mode == "resume" and plan.checkpoint is not None:
        loaded = load_checkpoint(plan.checkpoint, dist.rank)
        st = loaded["state"]
        if st["world_size"] != dist.world:
            raise ConfigError(f"checkpoint was written by {st['world_size']} process(es), this run has "
                              f"{dist.world}", str(plan.checkpoint))
        start_step = st["step"]
        if sharded:
            from .sharding import load_model_state

            load_model_state(model, {k: v.to(dist.device) for k, v in loaded["weights"].items()})
        else:
            with torch.no_grad():
                named = dict(model.named_parameters())
                for k, v in loaded["weights"].items():
                    named[k].copy_(v)
        sampler.load_state_dict(st["sampler"])
        collator.skipped = list(st.get("skipped", []))
    elif plan.mode == "resume" and is_main:
        print(f"[molora] --resume: no checkpoint in {ckpt_root}, starting from step 0")

    log = MetricsLog(out, is_main, start_step if loaded else None)
    batches = sampler.batches()
    sub_idx, optimizer, scheduler = -1, None, None
    trainable: list[torch.nn.Parameter] = []
    bar = None
    if is_main and progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=recipe.max_steps, initial=start_step, desc=f"{recipe.name}", dynamic_ncols=True)
    first_metrics: dict = {}
    last_metrics: dict = {}
    rows_trained = 0
    t_start = time.perf_counter()
    step = start_step
    while step < recipe.max_steps:
        i, sub, sub_start, sub_len = recipe.substep_at(step)
        if i != sub_idx:  # a new sub-step: its freeze plan, a fresh optimiser and schedule
            sub_idx = i
            apply_plan(model, sub.train)
            trainable = [p for p in model.parameters() if p.requires_grad]
            optimizer = build_optimizer(model, t)
            scheduler = build_scheduler(optimizer, t, sub_len)
            if loaded is not None and loaded["state"].get("substep") == i:
                if sharded:
                    from .sharding import load_optimizer_state

                    load_optimizer_state(model, optimizer, loaded["optimizer"])
                else:
                    optimizer.load_state_dict(loaded["optimizer"])
                scheduler.load_state_dict(loaded["scheduler"])
                rebase_groups(optimizer, scheduler, t)  # --resume-anyway: the recipe's rates, not the saved ones
            if is_main:
                print(substep_banner(recipe, sub, sub_start, sub_len, model))
        if loaded is not None and loaded["rng"] is not None:
            set_rng_state(loaded["rng"])
        loaded = None if loaded is not None and step == start_step else loaded
        model.train()
        t0 = time.perf_counter()
        global_batch_idx = next(batches)
        micro = [collate([samples[j] for j in idx]) for idx in sampler.shard(global_batch_idx, dist.rank, dist.world,
                                                                               t.grad_accum)]
        counts = [stage.batch_count(b) if b is not None else 0 for b in micro]
        n_tokens_local = sum(int((b["attention_mask"] if not paired else b["chosen"]["attention_mask"]).sum())
                             for b in micro if b is not None)
        total, n_tok = dist.all_sum([float(sum(counts)), float(n_tokens_local)])
        rows_trained += int(total)
        lrs = step_lrs(optimizer, t)  # what this step uses (the scheduler moves on after it)
        loss_sum, extra = 0.0, {}
        if total > 0:
            for b in micro:
                if b is None:
                    continue
                b = _move(b, dist.device)
                with torch.autocast(dist.device.type, dtype=dtype, enabled=dtype is not None):
                    l, m = stage.loss(model, b, ctx)
                scaled = l / total * dist.world  # gradients are averaged over processes below
                if scaled.requires_grad:  # rows that reach no trainable weight contribute no gradient
                    (scaler.scale(scaled) if scaler else scaled).backward()
                loss_sum += float(l.detach())
                for k, v in m.items():
                    extra[k] = extra.get(k, 0.0) + v / len(micro)
        if not sharded:  # FSDP2 reduce-scatters gradients itself
            dist.average_gradients(trainable)
        if scaler:
            scaler.unscale_(optimizer)
        gnorm = clip_gradients(trainable, t.max_grad_norm, dist, sharded) if t.max_grad_norm else 0.0
        if total > 0 and scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        elif total > 0:
            optimizer.step()
        if total > 0:
            scheduler.step()
        else:  # every row of this batch was skipped: the schedule still counts the step
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
                scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_total = dist.all_sum([loss_sum])[0] / max(total, 1)
        dt = time.perf_counter() - t0
        extra = {k: v for k, v in zip(extra, dist.all_sum([v / dist.world for v in extra.values()]))}
        last_metrics = {"step": step, "substep": sub.name, "loss": loss_total, **lrs,
                        "grad_norm": gnorm, "samples_per_s": global_batch / dt, "tokens_per_s": n_tok / dt,
                        "skipped": collator.num_skipped, **extra}
        first_metrics = first_metrics or last_metrics
        if is_main and (step % max(1, t.log_every) == 0 or step == recipe.max_steps):
            log.write(last_metrics)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_total:.4f}", lr=f"{last_metrics['lr']:.2e}",
                            sps=f"{last_metrics['samples_per_s']:.1f}", tps=f"{last_metrics['tokens_per_s']:.0f}")
        if recipe.save_every and step % recipe.save_every == 0 and step < recipe.max_steps:
            weights, opt_state = _training_state(model, optimizer, saved_names, sharded)
            save_checkpoint(ckpt_root, step, weights=weights, optimizer_state=opt_state, scheduler=scheduler,
                            state={"step": step, "substep": sub_idx, "sampler": sampler.state_dict(),
                                   "skipped": collator.skipped, "recipe": recipe.name,
                                   "identity": plan.identity},
                            rank=dist.rank, world=dist.world, barrier=dist.barrier, keep_last=recipe.keep_last)
        if t.eval_every and recipe.data.get("eval") and step % t.eval_every == 0:
            ev = evaluate_loss(model, recipe, processor, stage, ctx, dist)
            if is_main:
                log.write({"step": step, **ev})
    if bar is not None:
        bar.close()
    dist.barrier()
    summary = {"steps": step, "final": last_metrics, "skipped": collator.skipped,
               "wall_seconds": time.perf_counter() - t_start}
    if sharded:  # gather the full model on rank 0 into an ordinary (unsharded) copy
        from .sharding import full_model_state

        full = full_model_state(model)
        if is_main:
            from molora import MoLoRAModel

            model = MoLoRAModel(model.config)
            model.load_state_dict(full)
    if is_main:
        model.eval()
        model.freeze_base()
        save_final(model, processor, out)
        write_json_atomic(out / "summary.json", summary)
        write_json_atomic(out / RUN_FILE, {**json.loads((out / RUN_FILE).read_text()), "status": "finished",
                                           "steps": step})
        print_run_summary(out, summary, first_metrics, collator.skipped)
    log.close()
    dist.barrier()
    if rows_trained == 0 and start_step < recipe.max_steps:
        raise RunError(f"nothing was trained: every sample was skipped ({collator.num_skipped} listed in "
                       f"{out / 'summary.json'})", str(recipe.data["train"]))
    return summary


@torch.no_grad()
def clip_gradients(params: list[torch.nn.Parameter], max_norm: float, dist: Distributed, sharded: bool) -> float:
    """Scale gradients so their global L2 norm is at most ``max_norm``; returns the norm before.

    The norm is summed in float64 (squares of float32 values are exact there) and the scale is
    rounded to the gradients' dtype once, so a run whose gradients are sharded over processes
    (FSDP2: each process sums the squares of its shards, then the sums are added) and a run that
    holds them whole get the same scale, bit for bit, and hence the same steps."""
    grads = [p.grad for p in params if p.grad is not None]
    local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
    sq = sum((g.double().square().sum() for g in local), torch.zeros((), dtype=torch.float64, device=dist.device))
    total = dist.all_sum([float(sq)])[0] if sharded else float(sq)
    norm = total ** 0.5
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for g in local:
            g.mul_(torch.tensor(coef, dtype=torch.float64).to(g.dtype))
    return norm


def _training_state(model, optimizer, names: list[str], sharded: bool) -> tuple[dict, dict]:
    """(trainable weights, optimiser state) to checkpoint; with FSDP2 both are gathered in full on
    rank 0 (every rank must call this)."""
    if sharded:
        from .sharding import full_model_state, full_optimizer_state

        full = full_model_state(model)
        return {n: full[n] for n in names if n in full}, full_optimizer_state(model, optimizer)
    named = dict(model.named_parameters())
    return {n: named[n] for n in names}, optimizer.state_dict()


@torch.no_grad()
def evaluate_loss(model, recipe, processor, stage, ctx, dist) -> dict:
    from .collate import Collator

    samples = load_samples(recipe.data, "eval")
    coll = Collator(processor, strict=False)
    collate = coll.collate_preference if getattr(stage, "PAIRED", False) else coll
    model.eval()
    tot, n = 0.0, 0
    bs = recipe.training.micro_batch_size
    mine = list(range(dist.rank, len(samples), dist.world))
    for s in range(0, len(mine), bs):
        b = collate([samples[j] for j in mine[s: s + bs]])
        if b is None:
            continue
        l, _ = stage.loss(model, _move(b, dist.device), ctx)
        tot += float(l)
        n += stage.batch_count(b)
    tot, n = dist.all_sum([tot, float(n)])
    out = {"eval_loss": tot / max(n, 1)}
    if recipe.training.eval_generate and dist.rank == 0 and not getattr(stage, "PAIRED", False):
        from .evaluation import generation_metrics

        metrics = generation_metrics(model, processor, samples, batch_size=bs)
        out.update({k: v for k, v in metrics.items() if k != "predictions"})
    dist.barrier()
    model.train()
    return out


def run(recipe_name: str, overrides: list[str], output_dir: str, resume: bool = False, strict: bool | None = None,
        cpu: bool = False, overwrite: bool = False, resume_anyway: bool = False) -> dict:
    from .recipe import load_recipe

    recipe = load_recipe(recipe_name, overrides)  # every key checked and typed before anything loads
    return train(recipe, output_dir, resume=resume, strict=strict, cpu=cpu, overwrite=overwrite,
                 resume_anyway=resume_anyway)
