"""The trainer: one loop for every stage of the table (``stages/table.py``), on accelerate's process
state, from one CPU to many GPUs.

    train(recipe, out)  =  hold the folder  ->  setup  ->  loop: for each step: (sub-step boundary) -> step
                           -> checkpoint? -> evaluate? (every eval_every steps and at the end)  ->  finish

The output folder is held (``molora.folder_lock``) for the whole run; ``setup`` decides what to do with the output folder (start, resume, refuse; ``run_state.py``),
loads the data and the model, and restores a checkpoint; ``step`` runs one global batch (its
micro-batches, gradient averaging across processes, clipping, the optimiser); ``checkpoint`` writes
an atomic, resumable checkpoint; ``evaluate`` computes the eval loss (and generation metrics);
``finish`` writes ``final/``, the summary and the run record. Data parallelism and its exactness are
in ``distributed.py``, the gradients' reduction (torch DDP, or the hand-written average) in
``grad_sync.py``; FSDP2 in ``sharding.py``.
"""
from __future__ import annotations

import json
import os
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from molora.errors import ConfigError, RunError
from molora.signals import interrupts_between

from .checkpointing import load_checkpoint, save_checkpoint, set_rng_state
from .feed import StepFeed
from .distributed import Distributed
from .freeze import apply_plan
from .grad_sync import GradSync
from .loss_curve import save_loss_plot
from .metrics_log import MetricsLog, read_rows
from .optim import build_optimizer, build_scheduler, rebase_groups, step_lrs
from .recipe import Recipe
from .run_messages import loss_summary, plan_notes, print_run_summary, substep_banner
from .starting_weights import describe_start, start_record
from .run_state import (RUN_FILE, check_checkpoint_shapes, check_output_dir, finished_run, hold_output_dir, plan_run,
                        run_identity, save_final, start_run, write_json_atomic)
from .table import Stage, stage

__all__ = ["train", "run", "build_model", "load_samples", "seed_everything", "clip_gradients", "Distributed"]


@dataclass
class Context:
    """What a stage's loss may read besides the batch (DPO: the reference weights)."""

    recipe: Recipe
    reference_params: dict[str, torch.Tensor] | None = None


@dataclass
class Run:
    """Everything one training run holds between steps."""

    recipe: Recipe
    out: Path
    dist: Distributed
    stage: Stage
    model: Any
    processor: Any
    samples: list
    sampler: Any
    collator: Any
    ctx: Context
    identity: dict
    sharded: bool
    dtype: torch.dtype | None
    scaler: Any
    saved_names: list[str]
    log: MetricsLog
    start_step: int = 0
    step: int = 0
    loaded: dict | None = None  # the checkpoint being resumed, until its sub-step's state is restored
    sub_idx: int = -1
    optimizer: Any = None
    scheduler: Any = None
    trainable: list = field(default_factory=list)
    sync: Any = None  # GradSync: how this process's gradients meet the others' (this sub-step's)
    feed: Any = None  # StepFeed: each step's micro-batches
    sampler_state: dict | None = None  # the sampler right after the last step's batch
    skipped_upto: int = 0  # skip-list entries up to the last step's batch
    last_metrics: dict = field(default_factory=dict)
    rows_trained: int = 0
    stand_in: dict | None = None  # sharded runs: this process's last micro-batch (see _stand_in)
    t_start: float = 0.0
    eval_samples: list = field(default_factory=list)  # data.eval, read once before the first step
    last_eval: dict | None = None


# -- model and data ---------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(spec: dict, seed: int):
    """The recipe's model (`_build_float_model`), its frozen base quantised with ``model.quantization``
    (int8 / int4 / nf4) when the recipe asks."""
    model, processor = _build_float_model(spec, seed)
    if spec.get("quantization") and model.quantization is None:  # QLoRA (molora/quantization.py)
        from molora.quantization import quantize_frozen_base

        from .starting_weights import shipped_weights

        quantize_frozen_base(model, spec["quantization"])
        # where final/ says the base comes from (it never holds the quantised base): a checkpoint, or a
        # preset's shipped weights unchanged; otherwise (an assembly, a random init) it cannot be named
        if spec.get("path"):
            model.quantized_from = str(Path(spec["path"]).expanduser().resolve())
        elif not spec.get("config") and shipped_weights(spec) is not None:
            model.quantized_from = spec.get("preset", "tiny")
    return model, processor


def _build_float_model(spec: dict, seed: int):
    """Model from a recipe's ``model`` section: {path} | {preset, backbone, vision} | {preset} (its shipped
    pretrained parts, fresh projectors and LoRAs; ``init: random`` for a random model): see
    stages/starting_weights.py."""
    from molora import MoLoRAConfig, MoLoRAModel, MoLoRAProcessor

    from .starting_weights import load_shipped, shipped_weights

    seed_everything(seed)
    if spec.get("path"):
        model = MoLoRAModel.from_pretrained(spec["path"])
        processor = MoLoRAProcessor.from_pretrained(spec["path"])
        return model, processor
    preset = spec.get("preset", "tiny")
    config = MoLoRAConfig.preset(preset)
    if spec.get("config"):
        config = config.replace(**spec["config"])
    if spec.get("backbone") or spec.get("vision"):
        from molora.assemble import assemble

        model = assemble(config, backbone=spec.get("backbone"), vision=spec.get("vision"), seed=seed)
        config = model.config
    else:
        model = MoLoRAModel(config)
        weights = shipped_weights(spec)
        if weights is not None:
            load_shipped(model, weights, preset)
    return model, MoLoRAProcessor.from_config(config, tokenizer=None)


def load_samples(data: dict, key: str, skipped: list[dict] | None = None):
    """``data.<key>`` is a JSONL manifest path, or a datasets spec
    ``{path, split, config, kind, limit, streaming, ...columns}`` (hub id, saved dataset or files).
    Manifest rows left out (a line too long to read, a media path that never names a file) are appended to
    ``skipped``; no usable row is an error naming
    the source."""
    from molora.data.hf_datasets import read_hf_dataset
    from molora.data.manifest import read_manifest

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
            raise ConfigError(f"no usable rows: all {len(lost)} were skipped (first: {lost[0]['source']}: "
                              f"{lost[0]['reason']})", where)
    if not samples:
        raise ConfigError("no rows: the data is empty", where)
    return samples


def check_modalities(samples, config, where: str) -> None:
    """Every media part of ``samples`` is of one of the model's modalities (a ConfigError names the
    first row that holds another: the manifest is read before the model is built)."""
    types = {"text"} | {m.content_type for m in config.modality_entries()}
    for s in samples:
        for m in s.messages:
            for part in m["content"] if isinstance(m.get("content"), list) else []:
                if isinstance(part, dict) and part.get("type") not in types:
                    raise ConfigError(f"a {part.get('type')!r} part, but the model's modalities are "
                                      f"{', '.join(config.modalities)}", f"{where}: {s.source}")


def _precision(name: str, device: torch.device) -> torch.dtype | None:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _move(batch, device):
    if isinstance(batch, dict):
        return {k: _move(v, device) for k, v in batch.items()}
    return batch.to(device) if torch.is_tensor(batch) else batch


def _tokens(batch: dict, paired: bool) -> int:
    b = batch["chosen"] if paired else batch
    mask = b.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(b["input_ids"].numel())  # packed: every token is real


# -- the run ------------------------------------------------------------------------------------
def train(recipe: Recipe, output_dir: str | Path, *, resume: bool = False, strict: bool | None = None,
          cpu: bool = False, progress: bool = True, overwrite: bool = False, resume_anyway: bool = False) -> dict:
    """Run ``recipe`` into ``output_dir``. A folder that already holds a run needs ``resume`` (which
    checks that the recipe, data and model match the checkpoint's; ``resume_anyway`` accepts a change)
    or ``overwrite``; resuming a finished run trains nothing and returns its summary. The folder is
    held by this run from start to end: another run (or --overwrite) into it is refused."""
    out = Path(output_dir)
    if not recipe.data.get("train"):
        raise ConfigError("the recipe has no training data: pass data.train=PATH", recipe.name)
    check_output_dir(out)
    dist = Distributed(cpu=cpu)
    with hold_output_dir(out, dist):
        run = setup(recipe, out, dist, resume=resume, strict=strict, overwrite=overwrite, resume_anyway=resume_anyway)
        if isinstance(run, dict):  # the run had finished already
            return run
        try:
            loop(run, progress)
        except BaseException:
            run.log.close()
            raise
        finally:
            run.feed.close()
        return finish(run)


def loop(run: Run, progress: bool) -> None:
    """Every step from the run's position to ``max_steps``, with its logging, checkpoints and evaluations."""
    bar = _progress_bar(run) if progress and run.dist.is_main else None
    # one process: Ctrl-C / SIGTERM stop the run between steps (a second one at once); with several,
    # every process must stop at once, so the interrupt is raised where it lands
    with interrupts_between() if run.dist.world == 1 else nullcontext(lambda: None) as stop_if_asked:
        _steps(run, bar, stop_if_asked)
    if bar is not None:
        bar.close()


def _steps(run: Run, bar, stop_if_asked) -> None:
    recipe, t = run.recipe, run.recipe.training
    while run.step < recipe.max_steps:
        stop_if_asked()
        enter_substep(run)
        metrics = step(run)
        if run.dist.is_main and (run.step % max(1, t.log_every) == 0 or run.step == recipe.max_steps):
            run.log.write(metrics)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                            sps=f"{metrics['samples_per_s']:.1f}", tps=f"{metrics['tokens_per_s']:.0f}")
        if recipe.save_every and run.step % recipe.save_every == 0 and run.step < recipe.max_steps:
            checkpoint(run)
        at_end = run.step == recipe.max_steps
        if run.eval_samples and ((t.eval_every and run.step % t.eval_every == 0) or at_end):
            run.feed.wait()  # the processor is not shared between threads
            run.last_eval = {"step": run.step, **evaluate(run)}
            if run.dist.is_main:
                run.log.write(run.last_eval)


def setup(recipe: Recipe, out: Path, dist: Distributed, *, resume: bool, strict: bool | None, overwrite: bool,
          resume_anyway: bool) -> Run | dict:
    """Everything before the first step (the caller holds ``out``); a finished run's summary when there
    is nothing to train. Nothing is written to ``out`` until the data, the model and the checkpoint to
    resume have been read and checked."""
    from .collate import Collator
    from .sampler import LengthGroupedBatches

    # what to do with the output folder, decided before anything loads or is written
    plan = plan_run(out, run_identity(recipe), resume=resume or resume_anyway, overwrite=overwrite,
                    resume_anyway=resume_anyway)
    if plan.mode == "finished":
        return finished_run(out, plan, dist.is_main)
    st = stage(recipe.stage)
    unreadable: list[dict] = []
    samples = load_samples(recipe.data, "train", unreadable)  # a bad line stops here, before the model loads
    bad_kind = sorted({s.kind for s in samples} - set(st.data_kinds))
    if bad_kind:
        raise ConfigError(f"stage {recipe.stage!r} takes {st.data_kinds} rows, the manifest has {bad_kind}",
                          recipe.data["train"])
    eval_samples = load_samples(recipe.data, "eval") if recipe.data.get("eval") else []
    t = recipe.training
    # FSDP2 in any launched run, one process included (the sharded code paths, with one shard each);
    # a plain process has no process group to shard over
    sharded = dist.launched and (t.parallel == "fsdp2" or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true")
    model, processor = build_model(recipe.model, recipe.seed)
    for name, rows in (("data.train", samples), ("data.eval", eval_samples)):
        check_modalities(rows, model.config, name)
    if plan.mode == "resume" and plan.checkpoint is not None:
        check_checkpoint_shapes(plan.checkpoint, model)  # --resume-anyway with another model: refused here
    if dist.is_main:
        for line in [describe_start(start_record(recipe.model, recipe.seed)), *plan.fallback_lines(),
                     *plan_notes(recipe)]:
            print(line)
    start_run(recipe, out, dist, plan)

    model.to(dist.device)
    model.split_frozen_rows = t.split_frozen_rows and not sharded
    if t.activation_checkpointing:
        model.enable_activation_checkpointing()
    global_batch = t.micro_batch_size * t.grad_accum * dist.world
    sampler = LengthGroupedBatches([s.length for s in samples], global_batch, recipe.seed,
                                   group_by_length=t.group_by_length)
    collator = Collator(processor, strict=recipe.strict if strict is None else strict, spec_augment=t.spec_augment,
                        max_tokens=recipe.data.get("max_tokens"), pack=t.packing and not st.paired)
    collator.skipped.extend(unreadable)
    dtype = _precision(t.precision, dist.device)
    # parameters any sub-step trains: these are what checkpoints hold
    apply_plan(model, sorted({c for s in recipe.substeps for c in s.train}))
    saved_names = [n for n, p in model.named_parameters() if p.requires_grad]
    if sharded:
        from .sharding import shard_model

        shard_model(model, dist)
    ctx = Context(recipe)
    if st.paired:  # the DPO reference: every trainable tensor as built, before any step (a resumed run
        # rebuilds the same model from the same seed / path, so it gets the same reference); sharded, each
        # process holds the reference's shards of its own parameters' shards
        ctx.reference_params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    run = Run(recipe, out, dist, st, model, processor, samples, sampler, collator, ctx, plan.identity, sharded,
              dtype, torch.amp.GradScaler(dist.device.type) if dtype == torch.float16 else None, saved_names,
              log=None, eval_samples=eval_samples)
    if plan.mode == "resume" and plan.checkpoint is not None:
        _restore(run, load_checkpoint(plan.checkpoint, dist.rank), plan.checkpoint)
    elif plan.mode == "resume" and dist.is_main:
        print(f"[molora] --resume: no checkpoint in {out / 'checkpoints'}, starting from step 0")
    run.log = MetricsLog(out, dist.is_main, run.start_step if run.loaded else None)
    run.skipped_upto = collator.num_skipped
    run.feed = StepFeed(samples, sampler, collator, paired=run.stage.paired, rank=dist.rank, world=dist.world,
                        grad_accum=t.grad_accum, seed=recipe.seed, last_step=recipe.max_steps,
                        prefetch=t.prefetch if t.prefetch is not None else dist.device.type != "cpu",
                        workers=t.collate_workers)
    run.t_start = time.perf_counter()
    return run


def _restore(run: Run, loaded: dict, where: Path) -> None:
    """Weights, data position and skip list from a checkpoint (optimiser, schedule and RNG follow
    when the loop reaches the checkpoint's sub-step and step)."""
    st = loaded["state"]
    if st["world_size"] != run.dist.world and st.get("global_batch") != _global_batch(run):
        raise ConfigError(f"checkpoint was written by {st['world_size']} process(es) with a global batch of "
                          f"{st.get('global_batch', 'unrecorded')}, this run has {run.dist.world} and "
                          f"{_global_batch(run)}: another number of processes resumes a checkpoint that records its "
                          "global batch when training.grad_accum makes processes x micro_batch_size x grad_accum "
                          "the same (a recipe change: --resume-anyway)", str(where))
    run.start_step = run.step = st["step"]
    if loaded["sharded"] is not None:  # each process reads its shards (resharded for this run's processes)
        from .sharding import load_sharded_weights

        load_sharded_weights(loaded["sharded"], run.model, run.saved_names)
    elif run.sharded:
        from .sharding import load_model_state

        load_model_state(run.model, {k: v.to(run.dist.device) for k, v in loaded["weights"].items()})
    else:
        with torch.no_grad():
            named = dict(run.model.named_parameters())
            for k, v in loaded["weights"].items():
                named[k].copy_(v)
    run.sampler.load_state_dict(st["sampler"])
    run.collator.skipped = list(st.get("skipped", []))
    run.loaded = loaded


def _global_batch(run: Run) -> int:
    t = run.recipe.training
    return t.micro_batch_size * t.grad_accum * run.dist.world


def _progress_bar(run: Run):
    from tqdm.auto import tqdm

    return tqdm(total=run.recipe.max_steps, initial=run.start_step, desc=run.recipe.name, dynamic_ncols=True)


def enter_substep(run: Run) -> None:
    """At a sub-step boundary: its freeze plan, a fresh optimiser and schedule (restored from the
    checkpoint being resumed when it was written in this sub-step)."""
    recipe, t = run.recipe, run.recipe.training
    i, sub, start, n = recipe.substep_at(run.step)
    if i == run.sub_idx:
        return
    run.sub_idx = i
    apply_plan(run.model, sub.train)
    run.trainable = [p for p in run.model.parameters() if p.requires_grad]
    if run.sync is not None:
        run.sync.close()
    run.sync = GradSync(run.model, run.stage.loss, run.ctx, run.dist, t.grad_sync, sharded=run.sharded)
    run.optimizer = build_optimizer(run.model, t)
    run.scheduler = build_scheduler(run.optimizer, t, n)
    loaded = run.loaded
    if loaded is not None and loaded["state"].get("substep") == i:
        if loaded["sharded"] is not None:
            from .sharding import load_sharded_optimizer

            load_sharded_optimizer(loaded["sharded"], run.model, run.optimizer)
        elif run.sharded:
            from .sharding import load_optimizer_state

            load_optimizer_state(run.model, run.optimizer, loaded["optimizer"])
        else:
            run.optimizer.load_state_dict(loaded["optimizer"])
        run.scheduler.load_state_dict(loaded["scheduler"])
        rebase_groups(run.optimizer, run.scheduler, t)  # --resume-anyway: the recipe's rates, not the saved ones
    if run.dist.is_main:
        print(substep_banner(recipe, sub, start, n, run.model, run.optimizer))


def step(run: Run) -> dict:
    """One global batch: every micro-batch of this process forward and backward (the loss summed
    and divided by the global count), gradients averaged over processes (``run.sync``: DDP during
    backward, or by hand after it), clipped, the optimiser and the schedule stepped. Returns the
    step's metrics."""
    recipe, t, dist, model = run.recipe, run.recipe.training, run.dist, run.model
    if run.loaded is not None:  # the resumed step: every process's RNG as it was when the checkpoint was written
        if run.loaded["rng"] is not None:
            set_rng_state(run.loaded["rng"])
        run.loaded = None
    model.train()
    t0 = time.perf_counter()
    paired = run.stage.paired
    data = run.feed.get(run.step)
    micro, run.sampler_state, run.skipped_upto = data.micro, data.sampler_state, data.skipped
    counts = [run.stage.count(b) if b is not None else 0 for b in micro]
    if run.sharded:  # a stand-in for a micro-batch whose every sample was skipped: see _stand_in
        run.stand_in = next((b for b in reversed(micro) if b is not None), run.stand_in)
    total, n_tok = dist.all_sum([float(sum(counts)), float(sum(_tokens(b, paired) for b in micro if b is not None))])
    run.rows_trained += int(total)
    lrs = step_lrs(run.optimizer, t)  # what this step uses (the scheduler moves on after it)
    loss_sum, extra = 0.0, {}
    if total > 0:
        autocast = lambda: torch.autocast(dist.device.type, dtype=run.dtype, enabled=run.dtype is not None)  # noqa: E731
        loss_sum, extra = run.sync.backward(micro, total, move=lambda b: _move(b, dist.device),
                                            autocast=autocast, scaler=run.scaler,
                                            stand_in=(lambda: _stand_in(run)) if run.sharded else None)
    run.sync.reduce(run.trainable)  # manual: the hand-written average; DDP reduced during backward
    if run.scaler:
        run.scaler.unscale_(run.optimizer)
    gnorm = clip_gradients(run.trainable, t.max_grad_norm, dist, run.sharded) if t.max_grad_norm else 0.0
    if total > 0 and run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    elif total > 0:
        run.optimizer.step()
    if total > 0:
        run.scheduler.step()
    else:  # every row of this batch was skipped: the schedule still counts the step
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    dt = time.perf_counter() - t0
    extra = dict(zip(extra, dist.all_sum([v / dist.world for v in extra.values()])))
    global_batch = t.micro_batch_size * t.grad_accum * dist.world
    metrics = {"step": run.step, "substep": recipe.substep_at(run.step - 1)[1].name,
               "loss": dist.all_sum([loss_sum])[0] / max(total, 1), **lrs, "grad_norm": gnorm,
               "samples_per_s": global_batch / dt, "tokens_per_s": n_tok / dt,
               "skipped": run.skipped_upto, **extra}
    run.last_metrics = metrics
    return metrics


def _stand_in(run: Run) -> dict:
    """What a sharded process computes, times zero, in place of a micro-batch whose every sample was
    skipped (or an empty one): its latest batch, or before it had one, the first sample of the data
    that collates (a collator of its own: the run's skip list is untouched). FSDP2 gathers and
    reduce-scatters every unit in every forward and backward, so a process that left one out would
    keep the others waiting at its collectives; the stand-in's gradients are exact zeros."""
    if run.stand_in is None:
        from .collate import Collator

        own = Collator(run.processor, strict=False, max_tokens=run.recipe.data.get("max_tokens"), pack=run.collator.pack)
        collate = own.collate_preference if run.stage.paired else own
        run.stand_in = next((b for s in run.samples if (b := collate([s])) is not None), None)
        if run.stand_in is None:
            raise RunError("no sample of the training data can be read", str(run.recipe.data["train"]))
    return run.stand_in


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


def checkpoint(run: Run) -> Path:
    """An atomic, resumable checkpoint of this step (every process writes its RNG state; sharded, every
    process writes its shards of the trained weights and of the optimiser state, and nothing is gathered)."""
    weights = opt_state = write_shards = None
    if run.sharded:
        from .sharding import save_sharded

        def write_shards(folder: Path) -> None:
            save_sharded(folder, run.model, run.optimizer, run.saved_names)
    else:
        named = dict(run.model.named_parameters())
        weights, opt_state = {n: named[n] for n in run.saved_names}, run.optimizer.state_dict()
    # the sampler and skip list as they were after this step's batch (the feed may have read ahead)
    sampler = run.sampler_state if run.sampler_state is not None else run.sampler.state_dict()
    state = {"step": run.step, "substep": run.sub_idx, "sampler": sampler,
             "skipped": run.collator.skipped[:run.skipped_upto], "recipe": run.recipe.name, "identity": run.identity,
             "global_batch": _global_batch(run)}
    return save_checkpoint(run.out / "checkpoints", run.step, weights=weights, optimizer_state=opt_state,
                           scheduler=run.scheduler, state=state, rank=run.dist.rank, world=run.dist.world,
                           barrier=run.dist.barrier, keep_last=run.recipe.keep_last, write_shards=write_shards)


@torch.no_grad()
def evaluate(run: Run) -> dict:
    """Loss on ``data.eval`` (its batches shared over processes, each batch as one process would form
    it), plus generation metrics with ``training.eval_generate``: on rank 0, or, sharded, every process
    generating for its batches and rank 0 scoring them all. Sharded, every process enters every
    forward: a process short of batches runs one more and drops its result."""
    from .collate import Collator
    from .evaluation import greedy_predictions, rounds_of, task_metrics

    recipe, dist, model, st = run.recipe, run.dist, run.model, run.stage
    samples, bs = run.eval_samples, recipe.training.micro_batch_size
    chunks = [samples[s: s + bs] for s in range(0, len(samples), bs)]
    coll = Collator(run.processor, strict=False)
    collate = coll.collate_preference if st.paired else coll
    model.eval()
    tot, n = 0.0, 0
    filler = None  # the first batch that collates: what a process short of batches runs
    for i in rounds_of(len(chunks), dist.rank, dist.world, run.sharded):
        b = collate(chunks[i]) if i is not None else None
        if b is None and run.sharded:  # no rows, or none collated: still enter the forward
            filler = filler or next((f for f in map(collate, chunks) if f is not None), None)
            if filler is not None:
                st.loss(model, _move(filler, dist.device), run.ctx)
            continue
        if b is None:
            continue
        loss, _ = st.loss(model, _move(b, dist.device), run.ctx)
        tot += float(loss)
        n += st.count(b)
    tot, n = dist.all_sum([tot, float(n)])
    out = {"eval_loss": tot / max(n, 1)}
    if recipe.training.eval_generate and not st.paired and (run.sharded or dist.is_main):
        if run.sharded:
            preds = {i: greedy_predictions(model, run.processor, chunks[i if i is not None else 0], full_length=True)
                     for i in rounds_of(len(chunks), dist.rank, dist.world, True)}
            everyone = [None] * dist.world
            torch.distributed.all_gather_object(everyone, {i: p for i, p in preds.items() if i is not None})
            by_chunk = {i: p for part in everyone for i, p in part.items()}
            metrics = task_metrics(samples, [p for i in range(len(chunks)) for p in by_chunk[i]])
        else:
            from .evaluation import generation_metrics

            metrics = generation_metrics(model, run.processor, samples, batch_size=bs)
        if dist.is_main:
            out.update({k: v for k, v in metrics.items() if k != "predictions"})
    dist.barrier()
    model.train()
    return out


def finish(run: Run) -> dict:
    """``final/`` (atomic, a molora model folder with PEFT adapters), ``summary.json``, the run record
    marked finished, and the end-of-run lines."""
    dist, out = run.dist, run.out
    dist.barrier()
    summary = {"steps": run.step, "final": run.last_metrics, "skipped": run.collator.skipped,
               "wall_seconds": time.perf_counter() - run.t_start,
               # the path the run took: processes, FSDP2 or not, and the gradient sync (ddp | manual | none)
               "parallel": {"processes": dist.world, "sharded": run.sharded, "grad_sync": run.sync.mode if run.sync else None}}
    if run.last_eval is not None:
        summary["eval"] = run.last_eval
    model = run.model
    if run.sharded:  # the trained parameters gathered (one at a time) into the starting model, rebuilt on rank 0:
        # the frozen ones never changed, so they are not gathered
        from .sharding import gathered_trained

        trained = gathered_trained(model, run.saved_names, keep=dist.is_main)
        if dist.is_main:
            model, _ = build_model(run.recipe.model, run.recipe.seed)
            with torch.no_grad():
                named = dict(model.named_parameters())
                for k, v in trained.items():
                    named[k].copy_(v)
    if dist.is_main:
        model.eval()
        model.freeze_base()
        save_final(model, run.processor, out)
        rows = read_rows(run.log.path) if run.log.path.exists() else []  # this run's and, resumed, the earlier part's
        summary["windows"] = loss_summary(rows)
        save_loss_plot(out / "loss.png", rows, title=f"{run.recipe.name} ({run.recipe.stage})")
        write_json_atomic(out / "summary.json", summary)
        write_json_atomic(out / RUN_FILE, {**json.loads((out / RUN_FILE).read_text()), "status": "finished", "steps": run.step})
        print_run_summary(out, summary, run.collator.skipped)
    run.log.close()
    dist.barrier()
    if run.rows_trained == 0 and run.start_step < run.recipe.max_steps:
        raise RunError(f"nothing was trained: every sample was skipped ({run.collator.num_skipped} listed in "
                       f"{out / 'summary.json'})", str(run.recipe.data["train"]))
    return summary


def run(recipe_name: str, overrides: list[str], output_dir: str, resume: bool = False, strict: bool | None = None,
        cpu: bool = False, overwrite: bool = False, resume_anyway: bool = False) -> dict:
    from .recipe import load_recipe

    recipe = load_recipe(recipe_name, overrides)  # every key checked and typed before anything loads
    return train(recipe, output_dir, resume=resume, strict=strict, cpu=cpu, overwrite=overwrite,
                 resume_anyway=resume_anyway)
