"""A quantised frozen base (int8 / int4 / nf4, torch's own weight-only kernels): the layer, the model
over it, training its adapters, saving without the base, and the specs accepted.

Bounds. int8 per-channel symmetric: every weight is off by at most half a step, |dw| <= absmax_row / 254,
so a row's relative error is at most (absmax / rms) / 254 and, for rounding errors spread uniformly,
rms(dw) / rms(w) = (absmax / rms) / (127 * sqrt(12)) ~ 1/127 * (absmax / rms) / 3.5. int4 (asymmetric,
per group): |dw| <= (max - min) / 30 in its group; nf4: |dw| <= absmax_block * g / 2 with g the widest
gap of the code book (from -1 to -0.6962). Through the model: with eps the largest relative (Frobenius) error
of a quantised weight, each of the 2L sub-layers (attention, MLP) adds an error of relative size ~eps to
the residual stream, independently, so the logits' relative error is about sqrt(2L) * eps on average
over tokens; that is the bound asserted (eps measured on the model itself, L = 4 for tiny).
"""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from conftest import synth_audio, user_content
from molora import MoLoRAModel, MoLoRAProcessor
from molora.checkpoint import stored_model
from molora.errors import CheckpointError, ConfigError
from molora.quantization import QuantizationSpec, quantize_frozen_base, quantized_linears
from molora.quantized_linear import QuantizedLinear, kernels_used, nf4_code_book

SCHEMES = ("int8", "int4", "nf4")
KERNEL = {"int8": "aten._weight_int8pack_mm", "int4": "aten._weight_int4pack_mm_for_cpu", "nf4": "dequantize+matmul"}
PROMPTS = ["What is the capital of France?", "The cat sat on the mat and then", "Please count: one, two, three,",
           "Tell me a story about a red dog."]


@pytest.fixture(scope="module")
def float_model():
    return MoLoRAModel.from_pretrained("tiny")


@pytest.fixture(scope="module")
def processor():
    return MoLoRAProcessor.from_pretrained("tiny")


@pytest.fixture(scope="module")
def text_batch(processor):
    return processor([[{"role": "user", "content": [{"type": "text", "text": p}]}] for p in PROMPTS])


def speech_batch(processor):
    clip = "Transcribe the audio clip into text."
    rows = [[{"role": "user", "content": user_content((synth_audio(0.6, seed=i), 16000), clip)},
             {"role": "assistant", "content": "red green"}] for i in range(2)]
    batch = processor(rows)
    batch["labels"] = batch["input_ids"].clone()
    return batch


# -- the layer ----------------------------------------------------------------------------------------
def test_nf4_code_book_is_qloras():
    """The values published with QLoRA (Dettmers et al. 2023, appendix E), computed here from their definition."""
    published = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0]
    torch.testing.assert_close(nf4_code_book(), torch.tensor(published), rtol=0, atol=1e-6)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_error_bounds_and_kernel(scheme, dtype):
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 128, bias=True)
    w = lin.weight.detach()
    q = QuantizedLinear.from_linear(lin, scheme)
    dw = (q.dequantize(torch.float32) - w).abs()
    if scheme == "int8":
        bound = w.abs().amax(1, keepdim=True) / 254
    elif scheme == "int4":
        g = w.reshape(128, -1, 128)
        bound = ((g.amax(2) - g.amin(2)) / 30).repeat_interleave(128, 1)
    else:
        gap = nf4_code_book().diff().max() / 2  # the widest gap: -1 to -0.696
        bound = (w.reshape(128, -1, 64).abs().amax(2) * gap).repeat_interleave(64, 1)
    assert bool((dw <= bound * (1 + 1e-5) + 1e-7).all())
    x = torch.randn(5, 256).to(dtype)
    y = q(x)
    assert q.last_kernel == KERNEL[scheme] and y.dtype == dtype
    # the kernel computes x @ dequantised^T + b, to the input dtype's rounding over K = 256 terms
    want = x.float() @ q.dequantize(torch.float32).t() + lin.bias.detach()
    tol = 2 * math.sqrt(256) * torch.finfo(dtype).eps * (x.float().abs() @ q.dequantize(torch.float32).abs().t() + 1)
    assert bool(((y.float() - want).abs() <= tol).all())


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_the_kernels_scales_follow_a_write_to_the_layer(scheme):
    """The scales are cast to the input's dtype once, not per call; a write to them is still seen."""
    torch.manual_seed(0)
    layer = QuantizedLinear.from_linear(torch.nn.Linear(256, 64, bias=False), scheme)
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    first = layer(x)
    assert torch.equal(layer(x), first) and layer.last_kernel.startswith("aten.")
    name = "scales" if scheme == "int8" else "scales_zeros"
    with torch.no_grad():
        getattr(layer, name).mul_(2)
    assert torch.equal(layer(x), 2 * first)  # every weight doubled: a power of two, so exactly twice


@pytest.mark.parametrize("scheme", SCHEMES)
def test_backward_is_the_input_gradient_through_the_dequantised_weight(scheme):
    torch.manual_seed(1)
    q = QuantizedLinear.from_linear(torch.nn.Linear(128, 64, bias=False), scheme)
    x = torch.randn(3, 128, requires_grad=True)
    g = torch.randn(3, 64)
    q(x).backward(g)
    torch.testing.assert_close(x.grad, g @ q.dequantize(torch.float32))
    assert [p for p in q.parameters() if p.requires_grad] == []


# -- the model ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", SCHEMES)
def test_logits_close_to_float_and_top1_agrees(scheme, float_model, text_batch):
    model = MoLoRAModel.from_pretrained("tiny", quantization_config=scheme)
    linears = quantized_linears(model)
    assert len(linears) == 4 * 4  # qkv, o, gate_up, down in each of 4 layers: only the frozen base
    assert all(".lora_" not in n for n in linears)
    eps = max(float((q.dequantize(torch.float32) - float_model.get_submodule(n).weight).norm()
                    / float_model.get_submodule(n).weight.norm()) for n, q in linears.items())
    if scheme == "int8":
        assert eps <= 1 / 127
    with torch.no_grad():
        ref, got = float_model(**text_batch).logits, model(**text_batch).logits
    real = text_batch["attention_mask"].bool()
    rel = ((got - ref)[real].norm(dim=-1) / ref[real].norm(dim=-1)).mean()
    assert rel <= math.sqrt(2 * 4) * eps, (float(rel), eps)
    top1 = (got.argmax(-1) == ref.argmax(-1))[real].float().mean()
    # int8: the target; 4-bit on a 128-wide model (eps ~ 0.1) flips the tokens whose top-2 margin is
    # under ~eps of the logits' size: a floor, not a pin
    assert top1 >= (0.95 if scheme == "int8" else 0.75), float(top1)
    assert kernels_used(model) == {KERNEL[scheme]: 16}
    # embeddings, norms, LoRAs, projectors and the encoders keep the float dtype
    assert model.language_model.embed_tokens.weight.dtype == torch.float32
    assert model.language_model.layers[0].self_attn.qkv_proj.lora_A["speech"].weight.dtype == torch.float32


def test_the_plan_turns_fused_and_merged_paths_off_over_a_quantised_base(text_batch):
    model = MoLoRAModel.from_pretrained("tiny", quantization_config="int8")
    model.set_merged_inference(True)
    with torch.no_grad():
        plan = model.plan(text_batch["input_ids"], text_batch["attention_mask"])
        route = model.step_route(["speech", "text"])
    assert not plan.fused_lora and not plan.merged and not route.fused and not route.merged
    float_plan = MoLoRAModel.from_pretrained("tiny").plan(text_batch["input_ids"], text_batch["attention_mask"])
    assert float_plan.fused_lora


def test_generation_runs_over_a_quantised_base(processor):
    from molora import Chat

    model = MoLoRAModel.from_pretrained("tiny", quantization_config="int4")
    out = Chat(model, processor).generate([{"role": "user", "content": "Say hi."}], max_new_tokens=4)
    assert isinstance(out, str)
    assert kernels_used(model) == {KERNEL["int4"]: 16}


def test_gradients_reach_the_adapters_and_nothing_quantised(processor, float_model):
    batch = speech_batch(processor)
    grads = {}
    for name, model in (("float", MoLoRAModel.from_pretrained("tiny")),
                        ("int8", MoLoRAModel.from_pretrained("tiny", quantization_config="int8"))):
        model.train()
        with torch.no_grad():  # B non-zero: the adapters move the output, and A's gradient is not zero
            for n, p in model.named_parameters():
                if ".lora_B.speech" in n:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))) * 0.05)
        model(**batch).loss.backward()
        speech = {n: p.grad for n, p in model.named_parameters() if ".lora_A.speech" in n or ".lora_B.speech" in n}
        assert speech and all(g is not None and bool(g.abs().sum() > 0) for g in speech.values())
        assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
        grads[name] = torch.cat([g.flatten() for g in speech.values()])
    for q in quantized_linears(model).values():
        assert all(not t.requires_grad for t in q.buffers())
    cos = torch.nn.functional.cosine_similarity(grads["float"], grads["int8"], dim=0)
    assert cos >= 0.99, float(cos)


def test_encoders_are_quantised_only_when_asked(processor):
    model = MoLoRAModel.from_pretrained("tiny", quantization_config=QuantizationSpec("int8", include_encoders=True))
    names = quantized_linears(model)
    assert any(n.startswith("audio_embed.encoder.") for n in names)
    assert any(n.startswith("image_embed.img_processor.") for n in names)
    assert not any("projection" in n for n in names)  # projectors keep their dtype
    with torch.no_grad():
        assert torch.isfinite(model(**speech_batch(processor)).loss)


# -- saving -------------------------------------------------------------------------------------------
def test_save_refuses_the_quantised_base_and_round_trips_without_it(tmp_path, text_batch):
    model = MoLoRAModel.from_pretrained("tiny", quantization_config="int4")
    with torch.no_grad():
        model.language_model.layers[1].mlp.down_proj.lora_B["vision"].weight.normal_(0, 0.1)
    with pytest.raises(CheckpointError, match="without_base=True"):
        model.save_pretrained(tmp_path / "a")
    assert not (tmp_path / "a").exists()
    written = model.save_pretrained(tmp_path / "a", without_base=True)
    assert "quantized_base.json" in written
    record = json.loads((tmp_path / "a" / "quantized_base.json").read_text())
    assert record["base"] == "tiny" and record["quantization"]["scheme"] == "int4"
    with safe_open(str(tmp_path / "a" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert not any(k.endswith(".base_layer.weight") or "qweight" in k for k in keys)
    assert any(".lora_B.vision." in k for k in keys) and (tmp_path / "a" / "vision-lora").is_dir()
    with pytest.raises(CheckpointError, match="holds no base weights"):  # molora convert reads it this way
        stored_model(tmp_path / "a")
    again = MoLoRAModel.from_pretrained(str(tmp_path / "a"))
    assert again.quantization == model.quantization
    for (n, a), (m, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert n == m and torch.equal(a, b), n
    with torch.no_grad():
        torch.testing.assert_close(again(**text_batch).logits, model(**text_batch).logits, rtol=0, atol=0)


def test_the_original_folder_is_never_written_over(tmp_path):
    MoLoRAModel.from_pretrained("tiny").save_pretrained(tmp_path / "orig")
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "orig").iterdir()}
    model = MoLoRAModel.from_pretrained(str(tmp_path / "orig"), quantization_config="int8")
    # read and quantised linear by linear: the same model as the preset quantised after loading
    same = MoLoRAModel.from_pretrained("tiny", quantization_config="int8").state_dict()
    assert all(torch.equal(v, same[k]) for k, v in model.state_dict().items()) and len(same) == len(model.state_dict())
    with pytest.raises(CheckpointError, match="original base"):
        model.save_pretrained(tmp_path / "orig", without_base=True)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "orig").iterdir()} == before
    model.save_pretrained(tmp_path / "adapters", without_base=True)
    assert json.loads((tmp_path / "adapters" / "quantized_base.json").read_text())["base"] == \
        str((tmp_path / "orig").resolve())


def test_a_base_quantised_in_memory_has_no_origin_to_record(tmp_path):
    model = MoLoRAModel.from_pretrained("tiny")
    quantize_frozen_base(model, "nf4")
    with pytest.raises(CheckpointError, match="no recorded origin"):
        model.save_pretrained(tmp_path / "x", without_base=True)


# -- specs ----------------------------------------------------------------------------------------------
class Int8WeightOnlyConfig:  # the class name torchao gives its config object (torchao is not installed)
    pass


@pytest.mark.parametrize("value, want", [
    ("int8", QuantizationSpec("int8")),
    ("INT4", QuantizationSpec("int4")),
    ("nf4", QuantizationSpec("nf4")),
    # transformers' TorchAoConfig cannot be built without torchao: stand-ins with its attributes
    (SimpleNamespace(quant_type="int8_weight_only", quant_type_kwargs={}), QuantizationSpec("int8")),
    (SimpleNamespace(quant_type="int4_weight_only", quant_type_kwargs={"group_size": 64}),
     QuantizationSpec("int4", group_size=64)),
    (SimpleNamespace(quant_type=Int8WeightOnlyConfig(), quant_type_kwargs={}), QuantizationSpec("int8")),
])
def test_specs_accepted(value, want):
    assert QuantizationSpec.of(value) == want


def test_bitsandbytes_configs_are_read_without_bitsandbytes():
    from transformers import BitsAndBytesConfig

    assert QuantizationSpec.of(BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")) == \
        QuantizationSpec("nf4")
    assert QuantizationSpec.of(BitsAndBytesConfig(load_in_8bit=True)) == QuantizationSpec("int8")
    with pytest.raises(ConfigError, match="'fp4'"):
        QuantizationSpec.of(BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4"))


@pytest.mark.parametrize("value, message", [
    ("int3", "'int3'"), (8, "8 \\(int\\)"),
    (SimpleNamespace(quant_type="float8_weight_only", quant_type_kwargs={}), "'float8_weight_only'"),
])
def test_bad_specs_are_config_errors_naming_the_value(value, message):
    with pytest.raises(ConfigError, match=message):
        MoLoRAModel.from_pretrained("tiny", quantization_config=value)


def test_recipe_and_cli_options(capsys):
    from molora.cli import main
    from molora.stages.recipe import load_recipe

    assert load_recipe("tiny-speech", {"model.quantization": "int8"}).model["quantization"] == "int8"
    with pytest.raises(ConfigError, match="model.quantization"):
        load_recipe("tiny-speech", {"model.quantization": "int2"})
    assert main(["chat", "--model", "tiny", "--quantization", "int8", "--max-new-tokens", "2", "hi"]) == 0
    capsys.readouterr()
    for command in (["chat", "--model", "tiny"], ["eval", "asr", "--model", "tiny", "--output-dir", "x"]):
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--quantization", "int2"])
        assert exit_.value.code == 2 and "--quantization: invalid choice: 'int2'" in capsys.readouterr().err


def test_eval_loads_a_quantised_model_in_the_dtype_asked_for():
    from molora.eval.generate import load_model_and_processor

    model, _, _, dtype = load_model_and_processor("tiny", "bfloat16", "cpu", "int8")
    assert model.quantization == QuantizationSpec("int8") and dtype == torch.bfloat16
    layer = model.language_model.layers[0].self_attn.qkv_proj
    assert layer.base_layer.dtype == torch.bfloat16 and layer.lora_A["speech"].weight.dtype == torch.bfloat16


# -- training -------------------------------------------------------------------------------------------
def test_tiny_speech_trains_its_adapters_on_an_int8_base(tmp_path, text_batch):
    from datafactory import corpus
    from molora.stages.recipe import load_recipe
    from molora.stages.trainer import train

    data = corpus(tmp_path / "data", "asr")
    recipe = load_recipe("tiny-speech", {"data.train": str(data), "max_steps": 12, "seed": 1,
                                         "model.quantization": "int8"})
    train(recipe, tmp_path / "out", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines() if line]
    first, last = sum(r["loss"] for r in rows[:3]) / 3, sum(r["loss"] for r in rows[-3:]) / 3
    assert last < first, (first, last)
    final = tmp_path / "out" / "final"
    assert json.loads((final / "quantized_base.json").read_text())["base"] == "tiny"
    model = MoLoRAModel.from_pretrained(str(final))
    assert model.quantization == QuantizationSpec("int8")
    assert len(quantized_linears(model)) == 16


def test_eval_asr_cli_over_an_int8_base_records_it(tmp_path):
    import soundfile as sf

    from molora.cli import main
    from molora.synthetic.speech import speak

    rows = []
    for i, text in enumerate(["hello world", "good morning"]):
        sf.write(tmp_path / f"clip{i}.wav", speak(text), 16000)
        rows.append({"audio": f"clip{i}.wav", "text": text})
    (tmp_path / "clips.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert main(["eval", "asr", "--model", "tiny", "--manifest", str(tmp_path / "clips.jsonl"), "--output-dir",
                 str(out), "--max-new-tokens", "4", "--device", "cpu", "--quantization", "int8"]) == 0
    settings = json.loads((out / "summary.json").read_text())["settings"]
    assert settings["quantization"]["scheme"] == "int8"


def test_a_folder_loads_reading_one_base_weight_at_a_time(tmp_path, monkeypatch):
    """The float base is never held whole: the rest of the model is read first, then each base linear's
    weight alone, just before it is quantised (the one before it already replaced)."""
    from molora import stored_tensors

    MoLoRAModel.from_pretrained("tiny").save_pretrained(tmp_path / "orig")
    calls, real_read = [], stored_tensors.read
    monkeypatch.setattr(stored_tensors, "read", lambda tensors: calls.append(list(tensors)) or real_read(tensors))
    MoLoRAModel.from_pretrained(str(tmp_path / "orig"), quantization_config="nf4")
    base = [c for c in calls if len(c) == 1 and ".layers." in c[0] and c[0].endswith("weight")]
    assert len(base) == 16 and not any(k.endswith(".base_layer.weight") for k in calls[0])
