"""benchmarks/gpu_serve_vllm.py (the serving step of `make gpu-check`) without vLLM or a GPU: its
arguments, the venv it would install, the export it would serve, the requests it would send and the
token comparison."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_config
from molora import MoLoRAModel, MoLoRAProcessor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_serve_vllm as serve  # noqa: E402


def test_arguments_and_the_offline_install(tmp_path):
    with pytest.raises(SystemExit) as e:
        serve.parse_args([])  # --base is required
    assert e.value.code == 2
    args = serve.parse_args(["--base", "b", "--wheelhouse", "w"])
    assert (args.venv, args.preset, args.max_new_tokens) == ("/tmp/vllm-venv", "phi4-multimodal", 16)
    make_venv, install = serve.install_commands(tmp_path / "venv", "w", args.vllm_version)
    assert make_venv[1:] == ["-m", "venv", str(tmp_path / "venv")]
    assert install[0] == str(tmp_path / "venv" / "bin" / "python")
    assert install[-4:] == ["--no-index", "--find-links", "w", f"vllm=={args.vllm_version}"]
    assert "--no-index" not in serve.install_commands(tmp_path / "venv", None, "0.33.0")[1]


def test_a_bad_base_is_one_line(tmp_path, capsys):
    assert serve.main(["--base", str(tmp_path / "absent"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "absent") in err[0] and "no such directory" in err[0]


@pytest.fixture
def base(tmp_path):
    """An official folder without weights: config.json, remote code, tokenizer, processor files."""
    d = tmp_path / "base"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "phi4mm", "_name_or_path": "Phi-4-multimodal-instruct"}))
    (d / "modeling_phi4mm.py").write_text("raise RuntimeError('never imported')\n")
    (d / "preprocessor_config.json").write_text(json.dumps({"processor_class": "Phi4MMProcessor", "dynamic_hd": 4}))
    MoLoRAProcessor.from_config(tiny_config()).tokenizer.save_pretrained(str(d))
    return d


def test_the_export_and_requests_it_would_serve(base, tmp_path):
    torch.manual_seed(0)
    model = MoLoRAModel(tiny_config())
    export = tmp_path / "export"
    written = serve.export_for_vllm(model, export, base)
    assert {"modeling_phi4mm.py", "generation_config.json", "config.json", "speech-lora/adapter_config.json",
            "vision-lora/adapter_model.safetensors"} <= set(written)
    config = json.loads((export / "config.json").read_text())
    assert config["_name_or_path"] == "Phi-4-multimodal-instruct" and config["model_type"] == "phi4mm"
    processor = MoLoRAProcessor.from_pretrained(str(export))
    assert processor.config.vision.dynamic_hd == 4  # the base's processor settings
    convs = serve.prompts()
    requests = {r["kind"]: r for r in serve.vllm_requests(export, convs, processor, tmp_path)}
    assert requests["text"]["lora"] is None and requests["text"]["image"] is None
    assert requests["image"]["lora"] == str(export / "vision-lora") and "<|image_1|>" in requests["image"]["prompt"]
    assert requests["audio"]["lora"] == str(export / "speech-lora") and "<|audio_1|>" in requests["audio"]["prompt"]
    assert np.load(requests["audio"]["audio"]).shape == (6 * serve.SAMPLING_RATE,)
    assert Path(requests["image"]["image"]).stat().st_size > 0
    speech = json.loads((export / "speech-lora" / "adapter_config.json").read_text())
    assert speech["r"] == tiny_config().adapters["speech"].r and not speech["rank_pattern"]
    # molora's side of the comparison runs here too (tiny model, CPU)
    ours = serve.molora_tokens(model.eval(), processor, serve.prompts(), 3, torch.device("cpu"))
    assert {k: len(v) for k, v in ours.items()} == {"text": 3, "image": 3, "audio": 3}
    compile(serve.CHILD, "vllm_child.py", "exec")  # the script vLLM's venv runs is valid Python


@pytest.mark.parametrize("ours, theirs, same, first, common", [
    ([5, 6, 7], [5, 6, 7], True, None, 3),
    ([5, 6, 7], [5, 9, 7], False, 1, 1),
    ([5, 6, 7], [5, 6], False, 2, 2),
    ([], [], True, None, 0),
])
def test_compare_tokens(ours, theirs, same, first, common):
    r = serve.compare_tokens(ours, theirs)
    assert (r["same"], r["first_difference"], r["common_prefix"]) == (same, first, common)
    assert (r["molora_tokens"], r["vllm_tokens"]) == (len(ours), len(theirs))


def test_running_the_base_folders_code_is_the_users_explicit_choice(base, capsys):
    """vLLM serves phi4mm only by running the official folder's modeling code: the script refuses to
    start it unless the user passes --trust-remote-code (molora itself never runs remote code)."""
    assert serve.main(["--base", str(base), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(base) in err[0] and "pass --trust-remote-code" in err[0]
    assert serve.parse_args(["--base", str(base), "--trust-remote-code"]).trust_remote_code is True
