"""Backbone families other than Phi-3 (``molora/backbones``): a Llama- and a Qwen2-shaped decoder saved by
transformers become molora's backbone (``assemble``), give transformers + peft's logits with LoRA on every
projection, get adapters on every projection by default, train a stage, and round-trip molora's layout."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import randomize_
from datafactory import corpus
from molora import MoLoRAConfig, MoLoRAModel
from molora.assemble import assemble
from molora.config import LoraSpec, RouterEntry
from molora.errors import CheckpointError, ConfigError
from molora.presets import TINY_BPE_VOCAB

TOL = 1e-4  # float32 logits of a 2-layer decoder: the ones test_equivalence holds Phi-3 to
PROJECTIONS = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}
LAYERS = 2


def _transformers_model(family: str):
    """transformers' own model of the family, configured without molora (tiny preset's vocabulary and
    special tokens, so the tiny processor and recipes feed it)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shape = dict(vocab_size=TINY_BPE_VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=LAYERS,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rope_theta=5000.0,
                 tie_word_embeddings=False, bos_token_id=256, pad_token_id=256, eos_token_id=260)
    if family == "llama":
        cfg, cls = LlamaConfig(**shape), LlamaForCausalLM
    else:
        cfg, cls = Qwen2Config(**shape), Qwen2ForCausalLM
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = cls(cfg).eval()
    randomize_(model, seed=3)
    return model


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def backbone_dir(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    _transformers_model(request.param).save_pretrained(d)
    return request.param, d


def _text_routed_to_vision() -> MoLoRAConfig:
    """The tiny preset (its adapters name Phi-3's projections) with text rows using the vision adapter."""
    cfg = MoLoRAConfig.preset("tiny")
    router = {t: RouterEntry(adapter=r.adapter, audio_projector=r.audio_projector) for t, r in cfg.router.items()}
    router["text"].adapter = "vision"
    return cfg.replace(router=router)


def test_assembled_backbone_matches_transformers_and_peft(backbone_dir):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    family, d = backbone_dir
    model = assemble(_text_routed_to_vision(), backbone=str(d)).eval()
    b = model.config.backbone
    assert (b.family, b.rope_theta, b.hidden_size, b.num_key_value_heads, b.tie_word_embeddings) == (
        family, 5000.0, 64, 2, False)  # read from transformers' config.json
    # the preset's adapters were on every Phi-3 projection: on this family they are on every one of its own
    every = {f"layers.{i}.{block}.{name}" for i in range(LAYERS) for block, names in PROJECTIONS.items()
             for name in names}
    assert set(model.lora_layers()) == every
    assert model.config.adapters["vision"].target_modules == [n for names in PROJECTIONS.values() for n in names]

    spec = model.config.adapters["vision"]
    peft_model = get_peft_model(_transformers_model(family), LoraConfig(
        r=spec.r, lora_alpha=spec.alpha, target_modules=list(spec.target_modules), init_lora_weights=False))
    peft_model.eval()
    adapted = {n.removeprefix("base_model.model.model."): m for n, m in peft_model.named_modules()
               if isinstance(m, LoraLayer)}
    assert set(adapted) == every
    with torch.no_grad():  # peft's random A and B (B != 0: the adapter changes the logits) into molora's vision slot
        for name, layer in model.lora_layers().items():
            layer.lora_A["vision"].weight.copy_(adapted[name].lora_A["default"].weight)
            layer.lora_B["vision"].weight.copy_(adapted[name].lora_B["default"].weight)

    ids = torch.tensor([[256, 258, 104, 105, 300, 259, 72, 101, 900, 33], [256, 77, 78, 79, 80, 81, 256, 256, 256, 256]])
    mask = torch.tensor([[1] * 10, [1] * 6 + [0] * 4])
    with torch.no_grad():
        expected = peft_model(input_ids=ids, attention_mask=mask).logits
        got = model(input_ids=ids, attention_mask=mask).logits
        with peft_model.disable_adapter():
            base = peft_model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max().item() <= TOL
    assert (base[real] - expected[real]).abs().max().item() > 100 * TOL  # the adapters are really applied

    # decoding with molora's KV cache picks transformers + peft's greedy tokens
    seq = ids[:1, :6]
    for _ in range(4):
        with torch.no_grad():
            seq = torch.cat([seq, peft_model(input_ids=seq).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(model.generate(ids[:1, :6], max_new_tokens=4, eos_token_ids=[]), seq[:, 6:])


def test_default_lora_spec_adapts_every_projection():
    b = {"family": "llama", "rope_type": "default", "partial_rotary_factor": 1.0, "num_hidden_layers": LAYERS}
    cfg = MoLoRAConfig.preset("tiny").replace(backbone=b, adapters={"vision": LoraSpec(r=4, alpha=8),
                                                                    "speech": LoraSpec(r=5, alpha=10)})
    for spec in cfg.adapters.values():
        assert spec.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = MoLoRAModel(cfg)
    assert {n.rsplit(".", 1)[-1] for n in model.lora_layers()} == {n for names in PROJECTIONS.values() for n in names}
    assert len(model.lora_layers()) == 7 * LAYERS
    # phi3's default is its own four (fused) projections
    assert MoLoRAConfig.preset("tiny").adapters["vision"].target_modules == ["qkv_proj", "o_proj", "gate_up_proj",
                                                                              "down_proj"]
    with pytest.raises(ConfigError, match=r"\['qkv_proj'\] are not linears of a llama decoder layer"):
        MoLoRAConfig.preset("tiny").replace(backbone=b, adapters={"vision": LoraSpec(r=4, alpha=8,
                                                                                     target_modules=["qkv_proj"])})


def test_llama_backbone_trains_a_stage_and_round_trips(tmp_path):
    from molora.stages.recipe import load_recipe
    from molora.stages.trainer import train

    d = tmp_path / "llama"
    _transformers_model("llama").save_pretrained(d)
    data = corpus(tmp_path / "data", "asr")
    recipe = load_recipe("tiny-speech", {"data.train": str(data), "max_steps": 6, "seed": 1,
                                         "model.backbone": str(d)})
    train(recipe, tmp_path / "out", progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0], losses

    final = MoLoRAModel.from_pretrained(str(tmp_path / "out" / "final")).eval()
    assert final.config.backbone.family == "llama"
    assert len(final.lora_layers()) == 7 * LAYERS
    ids = torch.tensor([[256, 258, 104, 105, 300, 259]])
    again = tmp_path / "again"
    final.save_pretrained(again)
    with torch.no_grad():
        assert torch.equal(MoLoRAModel.from_pretrained(str(again))(input_ids=ids).logits, final(input_ids=ids).logits)
    with pytest.raises(CheckpointError, match="holds a Phi-3"):
        final.save_pretrained(tmp_path / "official", layout="phi4mm")


def test_unsupported_llama_checkpoints_are_refused(tmp_path):
    d = tmp_path / "llama3"
    _transformers_model("llama").save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 5000.0, "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 1024}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="rope type 'llama3' is not supported"):
        assemble(MoLoRAConfig.preset("tiny"), backbone=str(d))
    with pytest.raises(CheckpointError, match="a bare llama checkpoint .* is a backbone only"):
        MoLoRAModel.from_pretrained(str(d))
