"""PEFT adapter folders are read as PEFT reads them, in the forms real tools write them:

- peft's own ``save_pretrained`` (keys ``base_model.model.model.layers...``, targets as saved);
- transformers' ``convert_phi4_multimodal_weights_to_hf.py`` (regex target_modules
  ``model.layers.\\d+.((self_attn.(qkv|o)_proj)|(mlp.(gate_up|down)_proj))``, keys without the
  ``base_model.model.`` prefix), which transformers' ``load_adapter`` reads;
- a list of targets with ``layers_to_transform``, ``rank_pattern``, ``alpha_pattern`` and rsLoRA.

The base model is a tiny ``Phi4MultimodalForCausalLM`` saved by transformers; every reference is
transformers + peft on the same folder. Broken folders are errors naming the folder and the key.
"""
from __future__ import annotations

import json
import re
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import drawn_image, eager_vision, reference_logits, synth_audio, tiny_config, user_content
from molora import MoLoRAModel, MoLoRAProcessor
from molora.errors import CheckpointError
from molora.peft_adapters import decoder_linears

TOL = 1e-4
CONVERTER_TARGETS = r"model.layers.\d+.((self_attn.(qkv|o)_proj)|(mlp.(gate_up|down)_proj))"  # verbatim


def conv(*parts):
    return [{"role": "user", "content": user_content(*parts)}]


PROMPTS = {  # input type -> (messages, adapter the reference table routes it to)
    "text": (conv("hello there, what is new?"), None),
    "image": (conv(drawn_image(70, 50, 3), "what is drawn?"), "vision"),
    "speech": (conv((synth_audio(1.2, seed=4), 16000), "Transcribe the audio clip into text."), "speech"),
    "image+speech": (conv(drawn_image(60, 90, 5), (synth_audio(0.8, seed=5), 16000), "answer it"), "vision"),
}


def _copy_base(src, dst):
    dst.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(src / f, dst / f)


@pytest.fixture(scope="module")
def converter_form(reference_ckpt, tmp_path_factory):
    """The reference checkpoint with its adapters rewritten as the conversion script writes them:
    peft's LoraConfig(...).save_pretrained with the script's arguments, the tensors with the
    adapter name (and here peft's prefix) removed from the keys."""
    from peft import LoraConfig

    src, _, cfg = reference_ckpt
    d = tmp_path_factory.mktemp("converter") / "phi4_multimodal"
    _copy_base(src, d)
    for name, spec in cfg.adapters.items():
        LoraConfig(r=spec.r, lora_alpha=spec.alpha, target_modules=CONVERTER_TARGETS, lora_dropout=spec.dropout,
                   task_type="CAUSAL_LM").save_pretrained(d / f"{name}-lora")
        tensors = load_file(src / f"{name}-lora" / "adapter_model.safetensors")
        save_file({k.removeprefix("base_model.model."): v for k, v in tensors.items()},
                  d / f"{name}-lora" / "adapter_model.safetensors")
    return d


def transformers_load_adapter(d, names):
    """transformers' own reader of the converter's folders: ``load_adapter`` (adapters switched on
    each LoRA layer: transformers 5.24's ``set_adapter`` / ``disable_adapters`` ask for peft >= 0.22,
    not released)."""
    from transformers import Phi4MultimodalForCausalLM

    model = Phi4MultimodalForCausalLM.from_pretrained(str(d)).eval()
    eager_vision(model)
    with warnings.catch_warnings():  # peft's note that a second adapter joins the first
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        for name in names:
            model.load_adapter(str(d / f"{name}-lora"), adapter_name=name)
    return model


def _transformers_logits(model, batch, adapter):
    from peft.tuners.lora import LoraLayer

    for m in model.modules():
        if isinstance(m, LoraLayer):
            m.enable_adapters(adapter is not None)
            if adapter is not None:
                m.set_adapter(adapter)
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def _ours(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def test_converter_form_loads_with_its_adapters(converter_form, reference_ckpt):
    """Regex targets + unprefixed keys: molora equals transformers' load_adapter on the same folder,
    and both equal the peft model the adapters came from (the adapters are really applied)."""
    _, peft_model, cfg = reference_ckpt
    ours = MoLoRAModel.from_pretrained(str(converter_form))
    ref = transformers_load_adapter(converter_form, cfg.adapters)
    proc = MoLoRAProcessor.from_config(cfg)
    for kind, (messages, adapter) in PROMPTS.items():
        batch = proc(messages)
        assert ours.row_types(batch["input_ids"]) == [kind]
        got = _ours(ours, batch)
        assert (got - _transformers_logits(ref, batch, adapter)).abs().max().item() <= TOL, kind
        assert (got - reference_logits(peft_model, batch, adapter)).abs().max().item() <= TOL, kind
        if adapter is not None:  # a silent drop of the adapter would show here
            assert (got - reference_logits(peft_model, batch, None)).abs().max().item() > 100 * TOL


def test_peft_form_loads(reference_ckpt):
    d, peft_model, cfg = reference_ckpt
    ours = MoLoRAModel.from_pretrained(str(d))
    proc = MoLoRAProcessor.from_config(cfg)
    for kind, (messages, adapter) in PROMPTS.items():
        batch = proc(messages)
        assert (_ours(ours, batch) - reference_logits(peft_model, batch, adapter)).abs().max().item() <= TOL, kind


def test_layers_ranks_and_alphas_as_peft_reads_them(reference_ckpt, tmp_path):
    """A list of targets (suffix match), layers_to_transform, rank_pattern, alpha_pattern and rsLoRA,
    written by peft on transformers' model: molora adapts exactly the linears peft adapted, with
    peft's ranks and scalings."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import Phi4MultimodalForCausalLM

    src, _, cfg = reference_ckpt
    d = tmp_path / "patterns"
    _copy_base(src, d)
    base = Phi4MultimodalForCausalLM.from_pretrained(str(src)).eval()
    eager_vision(base)
    lcfg = LoraConfig(r=6, lora_alpha=9, target_modules=["self_attn.qkv_proj", "mlp.down_proj", "mlp.gate_up_proj"],
                      layers_to_transform=[0, 2, 3], rank_pattern={"down_proj": 3, "layers.3.self_attn.qkv_proj": 5},
                      alpha_pattern={"gate_up_proj": 4.0}, use_rslora=True, init_lora_weights=False)
    torch.manual_seed(7)
    made = get_peft_model(base, lcfg, adapter_name="vision")
    made.save_pretrained(tmp_path / "saved")
    shutil.move(str(tmp_path / "saved" / "vision"), str(d / "vision-lora"))  # peft: one folder per named adapter
    adapted = {n for n, m in made.named_modules() if hasattr(m, "lora_A") and "vision" in m.lora_A}
    assert all(".encoders." not in n and "img_processor" not in n for n in adapted)  # decoder linears only

    ours = MoLoRAModel.from_pretrained(str(d))
    spec = ours.config.adapters["vision"]
    assert {n.removeprefix("base_model.model.") for n in adapted} == {n for n in decoder_linears(cfg.backbone)
                                                                        if spec.adapts(n)}
    layer = ours.language_model.layers[3]
    assert layer.self_attn.qkv_proj.lora_A["vision"].weight.shape[0] == 5
    assert layer.mlp.down_proj.lora_A["vision"].weight.shape[0] == 3
    assert layer.mlp.gate_up_proj.scaling["vision"] == pytest.approx(4.0 / 6 ** 0.5)
    assert layer.mlp.down_proj.scaling["vision"] == pytest.approx(9 / 3 ** 0.5)
    assert not hasattr(layer.self_attn.o_proj, "lora_A")  # not targeted: a plain linear
    assert not hasattr(ours.language_model.layers[1].self_attn.qkv_proj, "lora_A")  # layer 1 not transformed
    ref = PeftModel.from_pretrained(Phi4MultimodalForCausalLM.from_pretrained(str(d)).eval(), str(d / "vision-lora"),
                                    adapter_name="vision").eval()
    eager_vision(ref)
    proc = MoLoRAProcessor.from_config(ours.config)
    for kind in ("image", "image+speech"):
        batch = proc(PROMPTS[kind][0])
        assert (_ours(ours, batch) - reference_logits(ref, batch, "vision")).abs().max().item() <= TOL, kind
    # molora writes it back as a folder peft reads with the same linears, ranks and scalings
    again = tmp_path / "again"
    ours.save_pretrained(again, layout="phi4_multimodal")
    back = MoLoRAModel.from_pretrained(str(again))
    assert back.config.adapters["vision"] == spec
    ref2 = PeftModel.from_pretrained(Phi4MultimodalForCausalLM.from_pretrained(str(again)).eval(),
                                     str(again / "vision-lora"), adapter_name="vision").eval()
    eager_vision(ref2)
    batch = proc(PROMPTS["image"][0])
    assert (_ours(ours, batch) - reference_logits(ref2, batch, "vision")).abs().max().item() <= TOL


def test_rank_and_alpha_patterns_match_like_peft():
    """LoraSpec.rank_alpha picks the pattern peft's get_pattern_key picks, for every decoder linear."""
    from peft.utils.other import get_pattern_key

    from molora.config import LoraSpec

    patterns = [{"down_proj": 3, "layers.3.self_attn.qkv_proj": 5}, {r"layers\.[02]\..*": 7, "o_proj": 2},
                {"model.layers.1.mlp.gate_up_proj": 9}, {"proj": 4}]
    for pattern in patterns:
        spec = LoraSpec(r=6, alpha=12, rank_pattern=pattern, alpha_pattern={k: 2.0 * v for k, v in pattern.items()})
        for name in decoder_linears(tiny_config().backbone):
            key = get_pattern_key(pattern.keys(), name)
            assert spec.rank_alpha(name) == (pattern.get(key, 6), 2.0 * pattern.get(key, 6)), (pattern, name)


def _broken(converter_form, tmp_path, edit):
    d = tmp_path / "broken"
    shutil.copytree(converter_form, d)
    edit(d)
    return d


def _edit_config(**changes):
    def edit(d):
        f = d / "speech-lora" / "adapter_config.json"
        cfg = json.loads(f.read_text())
        cfg.update(changes)
        f.write_text(json.dumps(cfg))
    return edit


def _edit_tensors(fn):
    def edit(d):
        f = d / "speech-lora" / "adapter_model.safetensors"
        save_file(fn(load_file(f)), f)
    return edit


BROKEN = {
    "matches nothing": (_edit_config(target_modules=r"model\.layers\.\d+\.self_attn\.q_proj"),
                        r"speech-lora/adapter_config\.json.*target_modules 'model\\\\.layers.*q_proj'.*matches none"),
    "missing key": (_edit_tensors(lambda t: {k: v for k, v in t.items()
                                             if k != "model.layers.2.mlp.down_proj.lora_B.weight"}),
                    r"speech-lora/adapter_model\.safetensors.*'model\.layers\.2\.mlp\.down_proj\.lora_B\.weight' is missing"),
    "wrong rank": (_edit_config(r=4),
                   r"speech-lora/adapter_model\.safetensors.*'model\.layers\.0\.\w+\.\w+\.lora_A\.weight' has shape "
                   r"\(10, (\d+)\), expected \(4, \1\) \(rank 4 from adapter_config\.json"),
    "tensor left unread": (_edit_tensors(lambda t: {**t, "model.embed_tokens_extend.audio_embed.encoder.encoders.0."
                                                         "self_attn.o_proj.lora_A.weight": torch.zeros(10, 64)}),
                           r"speech-lora/adapter_model\.safetensors.*'model\.embed_tokens_extend\.audio_embed\.encoder"
                           r"\.encoders\.0\.self_attn\.o_proj\.lora_A\.weight' is not read.*does not adapt"),
    "untargeted layer": (_edit_config(target_modules=r"model.layers.\d+.self_attn.(qkv|o)_proj"),
                         r"speech-lora/adapter_model\.safetensors.*'model\.layers\.0\.mlp\.\w+\.lora_A\.weight' is not "
                         r"read: a linear layer adapter_config\.json does not target"),
    "DoRA": (_edit_config(use_dora=True), r"speech-lora/adapter_config\.json.*use_dora.*DoRA"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_folders_name_the_folder_and_key(converter_form, tmp_path, case):
    edit, message = BROKEN[case]
    d = _broken(converter_form, tmp_path, edit)
    with pytest.raises(CheckpointError, match=message):
        MoLoRAModel.from_pretrained(str(d))


def test_peft_list_targets_that_reach_the_conformer_are_refused(reference_ckpt, tmp_path):
    """peft's suffix match of ["o_proj", ...] on transformers' model also adapts the conformer's
    attention; molora adapts decoder linears only and says which tensor it cannot place."""
    from peft import LoraConfig, get_peft_model
    from transformers import Phi4MultimodalForCausalLM

    src, _, _ = reference_ckpt
    d = tmp_path / "wide"
    _copy_base(src, d)
    base = Phi4MultimodalForCausalLM.from_pretrained(str(src))
    made = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["qkv_proj", "o_proj"]),
                          adapter_name="speech")
    made.save_pretrained(tmp_path / "saved")
    shutil.move(str(tmp_path / "saved" / "speech"), str(d / "speech-lora"))
    with pytest.raises(CheckpointError, match=re.escape("speech-lora/adapter_model.safetensors") +
                       r".*'base_model\.model\.model\.embed_tokens_extend\.audio_embed\..*o_proj\.lora_A\.weight' is not read"):
        MoLoRAModel.from_pretrained(str(d))
