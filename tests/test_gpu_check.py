"""`make gpu-check DEVICE=cpu PRESET=small`: the GPU check script runs end to end on the CPU and
reports every section; what does not depend on the machine is checked (timings are measured on a
lent GPU, not asserted), and the FSDP2 / DDP paths' memory and checkpoint size against bounds from
the shapes."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STEP_FIELDS = {"rows", "tokens", "audio_seconds", "step_seconds", "steps_timed", "loss", "loss_first", "loss_fp32",
               "flops_per_step", "tflops_per_s", "mfu", "peak_tflops_assumed", "trainable_parameters", "padding_free",
               "packed_attention", "packed_vs_rows"}


def _decoder_and_all_parameters(preset: str) -> tuple[int, int]:
    """Weights of the decoder's own linears (LoRAs left out), and every parameter, of ``preset``."""
    from molora import MoLoRAConfig, MoLoRAModel

    with torch.device("meta"):
        model = MoLoRAModel(MoLoRAConfig.preset(preset))
    base = sum(m.weight.numel() for n, m in model.language_model.layers.named_modules()
               if isinstance(m, torch.nn.Linear) and "lora" not in n)
    return base, sum(p.numel() for p in model.parameters())


# VmHWM (the CPU's peak measure) counts what no tensor holds: oneDNN's primitive cache and scratchpads,
# the intra-op threads' malloc arenas, code loaded during the first step. CUDA's max_memory_allocated
# counts tensors only: there the bound applies as it is
CPU_RUNTIME_BYTES = 512 * 2 ** 20


def check_parallel_paths(par: dict, trainable: int, cpu: bool = True) -> None:
    """The FSDP2 and DDP paths of gpu_check.json (one launched process each, the real trainer)."""
    fsdp2, ddp, bound = par["fsdp2"], par["ddp"], par["bounds"]
    assert fsdp2["parallel"] == {"processes": 1, "sharded": True, "grad_sync": "none"}
    assert ddp["parallel"] == {"processes": 1, "sharded": False, "grad_sync": "ddp"}
    for run in (fsdp2, ddp):
        assert (run["steps"], run["checkpoint"]) == (2, "step-1") and run["step_s"] > 0, run
        # the speech post-training plan of the train step; the starting folder is bf16, the trainer keeps it
        assert run["trainable_parameters"] == trainable < run["total_parameters"] and run["trainable_dtype"] == "bfloat16"
        assert bound["model_bf16_bytes"] == 2 * run["total_parameters"]
        # peak over the resident set before the model loaded: the bf16 model, gradients and AdamW state of
        # what trains, activations (benchmarks/gpu_check.py memory_bounds), plus the CPU runtime's own
        assert run["peak_memory_bytes"] - run["baseline_rss_bytes"] <= bound["peak_bytes"] + CPU_RUNTIME_BYTES * cpu, run
    # the same steps on one rank: FSDP2's all-gather and reduce-scatter over one process copy, DDP's
    # all-reduce leaves its buckets as they are; the same kernels (MKL_CBWR), the same execution plan
    assert fsdp2["losses"] == ddp["losses"] and par["max_abs_loss_difference"] == 0.0
    # the same compute: what FSDP2 adds (its sharded copy of each parameter as it shards) stays below one
    # more model; gathering the model at the save, as before DCP checkpoints, would add more than that
    assert fsdp2["peak_memory_bytes"] - ddp["peak_memory_bytes"] < bound["model_bf16_bytes"], (fsdp2, ddp)
    # the FSDP2 checkpoint: the trained tensors and their two AdamW moments (float32 at most) and 1 MiB of
    # scheduler / RNG / trainer state; far below the whole model in float32 (a quarter of it, here an eighth)
    assert fsdp2["checkpoint_bytes"] <= bound["checkpoint_bytes"] == 12 * trainable + 2 ** 20, (fsdp2, bound)
    assert fsdp2["checkpoint_bytes"] < bound["model_fp32_bytes"] / 4


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu(tmp_path):
    r = subprocess.run(["make", "-s", "gpu-check", "DEVICE=cpu", "PRESET=small"], cwd=ROOT, capture_output=True,
                       text=True, timeout=900, env={**os.environ, "OUT": str(tmp_path)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert (res["device"], res["preset"], res["dtype"]) == ("cpu", "small", "bfloat16")
    step = res["speech_post_training_step"]
    assert set(step) == STEP_FIELDS and step["padding_free"] and step["mfu"] is None  # no CPU peak to divide by
    assert step["trainable_parameters"] > 0
    # the plan's packed-attention kernel: rows on the CPU (compiled FlexAttention on CUDA, compared with rows there)
    assert (step["packed_attention"], step["packed_vs_rows"]) == ("rows", None)
    assert (step["rows"], step["steps_timed"]) == (2, 1) and 2 * 1.5 <= step["audio_seconds"] <= 2 * 2.5
    # the bf16-autocast loss of the untouched weights against the same forward in float32: the per-token
    # errors (a few bf16 roundings of each logit) average over the tokens, so the mean stays within one
    # bf16 unit roundoff (2^-8) of the loss
    assert abs(step["loss_first"] - step["loss_fp32"]) <= 2 ** -8 * step["loss_fp32"], step
    assert step["loss"] < step["loss_first"], step  # the last step sees the batch after two AdamW updates on it
    # FLOPs of one step: at least the decoder's linears forward and backward (2 + 2 per weight and token:
    # the speech projector under the first layer trains, so the gradient crosses every layer), at most
    # 6 per weight and token for every parameter (forward, input and weight gradients; attention over
    # rows of a few dozen tokens is small beside it)
    base, every = _decoder_and_all_parameters("small")
    assert 4 * base * step["tokens"] <= step["flops_per_step"] <= 6 * every * step["tokens"], step
    check_parallel_paths(res["parallel_training"], step["trainable_parameters"])
    asr = res["asr"]
    assert set(asr) == {"batch", "audio_seconds", "seconds", "rtfx", "new_tokens_per_row"}
    assert asr["batch"] == 128 and asr["new_tokens_per_row"] == 4 and 128 * 0.6 <= asr["audio_seconds"] <= 128 * 1.2
    # audio over seconds, each field rounded (0.1 s of audio, 1 ms, 0.01) after the division
    assert asr["rtfx"] == pytest.approx(asr["audio_seconds"] / asr["seconds"], rel=1e-2)
    assert set(res["logits_vs_transformers"]) == {"text", "image", "speech"}
    for prompt, cmp in res["logits_vs_transformers"].items():
        assert set(cmp) == {"max_abs_diff", "logit_scale", "relative", "same_greedy_tokens"}
        # two bf16 implementations of an 8-layer model: within a few bf16 roundings of the logits' scale
        assert cmp["logit_scale"] > 0 and cmp["relative"] <= 2 ** -4, (prompt, cmp)


def test_kernel_vs_rows_is_zero_where_the_plan_runs_rows():
    """The GPU check's comparison of the plan's packed-attention kernel with ``rows`` (on CUDA:
    compiled FlexAttention's loss and gradients): on the CPU the plan picks ``rows`` itself, so the
    two runs are the same computation and differ by nothing."""
    import importlib.util

    from conftest import double_tiny, drawn_image
    from molora.packing import pack_batch

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    model, proc = double_tiny(seed=1)
    model.float()
    convs = [[{"role": "user", "content": [{"type": "text", "text": "say hello"}]},
              {"role": "assistant", "content": "hi"}],
             [{"role": "user", "content": [{"type": "image", "image": drawn_image(90, 60, 1)},
                                           {"type": "text", "text": "what is drawn?"}]},
              {"role": "assistant", "content": "boxes"}]]
    batch = pack_batch(proc(convs, return_labels=True))
    trainable = [p for p in model.parameters() if p.requires_grad]
    res = gpu_check.kernel_vs_rows(model, batch, trainable, torch.device("cpu"))
    assert res == {"loss_rel_diff": 0.0, "grad_rel_diff": 0.0}
