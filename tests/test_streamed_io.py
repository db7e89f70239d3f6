"""Checkpoints are converted, saved and loaded shard by shard: the files equal, byte for byte, what the
in-memory path (huggingface_hub's save_torch_state_dict over the whole state dict) writes, for every pair
of layouts; and the peak memory of a convert, a save and a cast load is the process's own plus a few
shards, measured in a child process (VmHWM) on a checkpoint of ~12 shards."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from conftest import randomize_, tiny_config
from molora import MoLoRAConfig, MoLoRAModel
from molora.cli import main as cli

LAYOUTS = ("molora", "phi4mm", "phi4_multimodal")


def in_memory_save(model, directory, layout: str, max_shard_size: str) -> None:
    """What `molora convert` wrote before it streamed: the whole state dict, renamed, handed to
    huggingface_hub's save_torch_state_dict; the adapters with safetensors' save_file."""
    from huggingface_hub import save_torch_state_dict

    from molora import checkpoint_layouts, peft_adapters

    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    cfg, name = model.config, str(model.dtype).removeprefix("torch.")
    if layout == "molora":
        weights, config = sd, cfg.to_dict()
    elif layout == "phi4mm":
        weights = {checkpoint_layouts.to_phi4mm_key(k): v for k, v in sd.items()}
        config = checkpoint_layouts.to_phi4mm_config(cfg)
    else:
        weights = checkpoint_layouts.to_transformers_state_dict(sd)
        config = checkpoint_layouts.to_transformers_config(cfg)
    directory.mkdir(parents=True)
    save_torch_state_dict(weights, directory, max_shard_size=max_shard_size)
    (directory / "config.json").write_text(json.dumps({**config, "torch_dtype": name, "dtype": name}, indent=2) + "\n")
    if layout == "phi4mm":  # the official folder's generation config (not a weights file: no streaming involved)
        from molora.official_folder import generation_config

        (directory / "generation_config.json").write_text(json.dumps(generation_config(cfg), indent=2) + "\n")
    for adapter, tensors in peft_adapters.adapter_state_dicts(sd).items():
        (directory / f"{adapter}-lora").mkdir()
        save_file(tensors, str(directory / f"{adapter}-lora" / "adapter_model.safetensors"), metadata={"format": "pt"})
        (directory / f"{adapter}-lora" / "adapter_config.json").write_text(
            json.dumps(peft_adapters.peft_config(adapter, cfg.adapters[adapter]), indent=2))


def files_of(directory) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A tiny random model (non-zero LoRAs) saved in each layout, sharded (~10 shards of 400 KB)."""
    root = tmp_path_factory.mktemp("streamed")
    torch.manual_seed(0)
    model = MoLoRAModel(tiny_config()).eval()
    randomize_(model, seed=5)
    for layout in LAYOUTS:
        model.save_pretrained(root / layout, layout=layout, max_shard_size="400KB")
    return root, model


@pytest.mark.parametrize("source", LAYOUTS)
def test_streamed_convert_writes_the_in_memory_files(sources, source, tmp_path):
    """Every pair of layouts, and a cast: each file the streamed convert writes (shards, index, config.json,
    PEFT folders) equals the in-memory path's byte for byte."""
    root, _ = sources
    for target, dtype in [(layout, "auto") for layout in LAYOUTS] + [("phi4_multimodal", "bfloat16")]:
        out = tmp_path / f"{target}-{dtype}"
        assert cli(["convert", str(root / source), str(out), "--layout", target, "--dtype", dtype,
                    "--max-shard-size", "400KB", "--no-processor"]) == 0
        expected = tmp_path / f"expected-{target}-{dtype}"
        loaded = MoLoRAModel.from_pretrained(str(root / source), dtype=None if dtype == "auto" else dtype)
        in_memory_save(loaded, expected, target, "400KB")
        got, want = files_of(out), files_of(expected)
        assert sorted(got) == sorted(want), (source, target)
        assert sum(f.endswith(".safetensors") and "/" not in f for f in got) > 3  # really sharded
        for name in want:
            assert got[name] == want[name], (source, target, dtype, name)


def test_save_pretrained_writes_the_in_memory_files(sources, tmp_path):
    _, model = sources
    for layout in LAYOUTS:
        model.save_pretrained(tmp_path / layout, layout=layout, max_shard_size="400KB")
        in_memory_save(model, tmp_path / f"expected-{layout}", layout, "400KB")
        assert files_of(tmp_path / layout) == files_of(tmp_path / f"expected-{layout}"), layout


# -- peak memory ----------------------------------------------------------------------------------------

SHARD = 32 * 2**20  # bytes per shard of the big source and of the outputs

CHILD = r"""
import json, sys, time
from pathlib import Path

def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))

def reset():  # the peak starts again from the current RSS (Linux >= 4.0); if refused, it only stays higher
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass

import torch
from molora.cli import main as cli
from molora import MoLoRAModel

warm, big, out, shard, step = sys.argv[1:]
warm, big, out = Path(warm), Path(big), Path(out)
result = {}
if step == "convert":
    # the process's own: imports and every code path once, on a tiny checkpoint
    for layout, dtype in (("phi4_multimodal", "auto"), ("molora", "bfloat16")):
        assert cli(["convert", str(warm / "phi4mm"), str(out / ("warm-" + layout)), "--layout", layout,
                    "--dtype", dtype, "--no-processor"]) == 0
    for name, args in (("convert_phi4mm_to_native", ["--layout", "phi4_multimodal"]),
                       ("convert_native_to_molora_bf16", ["--layout", "molora", "--dtype", "bfloat16"])):
        src = big if name.startswith("convert_phi4mm") else out / "convert_phi4mm_to_native"
        reset()
        base = rss()
        t0 = time.perf_counter()
        assert cli(["convert", str(src), str(out / name), *args, "--max-shard-size", shard, "--no-processor"]) == 0
        result[name] = {"base": base, "peak": hwm(), "s": time.perf_counter() - t0}
else:  # a bfloat16 checkpoint loaded as float32, then saved
    MoLoRAModel.from_pretrained(str(warm / "phi4mm"), dtype="float32").save_pretrained(out / "warm-save")
    reset()
    base = rss()
    model = MoLoRAModel.from_pretrained(str(big), dtype="float32")
    result["load_bf16_as_float32"] = {"base": base, "peak": hwm(),
                                      "model": sum(t.numel() * t.element_size() for t in model.state_dict().values())}
    reset()
    base = rss()
    model.save_pretrained(out / "saved", layout="phi4_multimodal", max_shard_size=shard)
    result["save_float32"] = {"base": base, "peak": hwm()}
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def big_source(tmp_path_factory):
    """The `small` preset (random, ~376 MiB in float32) in the official layout, in ~12 shards of 32 MiB; and
    in bfloat16 in molora's layout, one file."""
    root = tmp_path_factory.mktemp("big")
    torch.manual_seed(0)
    model = MoLoRAModel(MoLoRAConfig.preset("small"))
    model.save_pretrained(root / "phi4mm", layout="phi4mm", max_shard_size=f"{SHARD // 2**20}MB")
    model.to(torch.bfloat16).save_pretrained(root / "bf16")  # one file, as most checkpoints under 5 GB are
    return root, sum(p.stat().st_size for p in (root / "phi4mm").glob("*.safetensors"))


def run_child(step: str, warm, big, out) -> dict:
    out.mkdir()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(warm), str(big), str(out), f"{SHARD // 2**20}MB", step],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\npeak RSS above the process's own, MiB ({step}):",
          {k: round((v["peak"] - v["base"]) / 2**20) for k, v in r.items()})
    return {k: v["peak"] - v["base"] for k, v in r.items()} | {"model": r.get("load_bf16_as_float32", {}).get("model")}


def test_convert_holds_a_few_shards_not_the_checkpoint(sources, big_source, tmp_path):
    """`molora convert` phi4mm -> transformers-native (+ PEFT folders), and native -> molora with a cast
    to bfloat16 (PEFT folders merged back): peak RSS above the process's own (imports and a warm-up
    convert of a tiny checkpoint) stays within a few shards, whereas the checkpoint is ~12 of them
    (it was the whole checkpoint)."""
    root, size = big_source
    assert size > 10 * SHARD
    r = run_child("convert", sources[0], root / "phi4mm", tmp_path / "out")
    assert r["convert_phi4mm_to_native"] < 3 * SHARD, r
    assert r["convert_native_to_molora_bf16"] < 3 * SHARD, r


@pytest.mark.slow
def test_cast_load_and_save_hold_no_second_copy(sources, big_source, tmp_path):
    """A bfloat16 checkpoint (one file) loaded as float32 costs the float32 model and a little (it cost the
    float32 model plus the whole bfloat16 file, mapped until its last tensor was cast); saving that model
    costs a few shards (no copy of the state dict)."""
    root, _ = big_source
    r = run_child("load", sources[0], root / "bf16", tmp_path / "out")
    assert r["load_bf16_as_float32"] < r["model"] + 2 * SHARD, r
    assert r["save_float32"] < 3 * SHARD, r


def test_convert_and_save_show_a_bytes_progress_bar(sources, tmp_path, capsys):
    """A bar over the bytes written (tqdm, as training and evaluation show theirs), when asked for; the
    library default shows it on a terminal for checkpoints of 1 GiB or more, never for a tiny one."""
    from molora.convert import convert

    root, model = sources
    convert(str(root / "phi4mm"), tmp_path / "a", layout="phi4_multimodal", processor=False, progress=True)
    err = capsys.readouterr().err
    assert "writing a" in err and "100%" in err and "5.54M" in err
    model.save_pretrained(tmp_path / "b", progress=True)
    assert "writing b" in capsys.readouterr().err
    model.save_pretrained(tmp_path / "c")
    assert "writing" not in capsys.readouterr().err
