"""Shared fixtures: tiny configs, drawn images, synthesised audio, and a reference checkpoint
made by transformers (Phi4MultimodalForCausalLM) with PEFT adapters made by peft."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from molora import MoLoRAConfig
from molora.synthetic.media import drawn_image, synth_audio  # noqa: F401 (tests import them from here)


def pytest_configure(config):
    # the suite's thread count, set when pytest starts; `make test-numerics` varies it and the
    # denormal mode to show that no tolerance depends on one machine's rounding
    import os

    torch.set_num_threads(int(os.environ.get("MOLORA_TEST_THREADS", "2")))
    if os.environ.get("MOLORA_TEST_FLUSH_DENORMAL") == "1":
        torch.set_flush_denormal(True)


def tiny_config() -> MoLoRAConfig:
    return MoLoRAConfig.preset("tiny")


def user_content(*parts) -> list[dict]:
    """Content parts from strings (text), (array, rate) tuples (audio) and PIL images."""
    content = []
    for p in parts:
        if isinstance(p, str):
            content.append({"type": "text", "text": p})
        elif isinstance(p, tuple):
            content.append({"type": "audio", "audio": p})
        else:
            content.append({"type": "image", "image": p})
    return content


def double_tiny(seed: int = 0):
    """A random tiny model in float64 for comparing execution paths: LoRA B non-zero (so the adapters
    move the logits), the speech projector trainable, dropout off (both runs see the same function);
    train mode, with its processor."""
    from molora import MoLoRAModel, MoLoRAProcessor

    torch.manual_seed(seed)
    cfg = MoLoRAConfig.preset("tiny")
    model = MoLoRAModel(cfg).double()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.1)
    for p in model.audio_embed.audio_projection.parameters():
        p.requires_grad_(True)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model.train(), MoLoRAProcessor.from_config(cfg)


def randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter and buffer random and non-zero (zeros would hide wiring bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(module.named_parameters()) + list(module.named_buffers()):
            if not p.is_floating_point() or p.numel() == 0:
                continue
            if "inv_freq" in name:
                continue
            parent = name.split(".")[-2] if "." in name else ""
            if "norm" in parent or "invstd" in name:
                p.copy_(torch.empty(p.shape).uniform_(0.8, 1.2, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def random_tiny(seed: int = 0):
    """A tiny model in eval mode with every weight random and non-zero (LoRA B too)."""
    from molora import MoLoRAModel

    torch.manual_seed(0)
    model = MoLoRAModel(tiny_config()).eval()
    randomize_(model, seed=seed)
    return model


def lora_targets_regex() -> str:
    return r"model\.layers\.\d+\.(self_attn\.(qkv_proj|o_proj)|mlp\.(gate_up_proj|down_proj))"


def make_reference_checkpoint(directory: Path, config: MoLoRAConfig, seed: int = 0):
    """Save a random tiny Phi4MultimodalForCausalLM (transformers-native layout) plus PEFT folders
    ``vision-lora/`` and ``speech-lora/`` with random non-zero weights. Returns the peft model."""
    from peft import LoraConfig, get_peft_model
    from transformers import Phi4MultimodalConfig, Phi4MultimodalForCausalLM

    from molora.checkpoint_layouts import to_transformers_config

    hf_cfg = Phi4MultimodalConfig(**{k: v for k, v in to_transformers_config(config).items()
                                     if k not in ("model_type", "architectures")})
    torch.manual_seed(seed)
    model = Phi4MultimodalForCausalLM(hf_cfg).eval()
    randomize_(model, seed)
    model.save_pretrained(directory)
    eager_vision(model)
    peft_model = None
    tmp = directory / "_peft"
    for name, spec in config.adapters.items():
        lcfg = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                          target_modules=lora_targets_regex(), init_lora_weights=False)
        if peft_model is None:
            peft_model = get_peft_model(model, lcfg, adapter_name=name)
        else:
            peft_model.add_adapter(name, lcfg)
    peft_model.save_pretrained(tmp)
    for name in config.adapters:
        src = tmp / name if (tmp / name).exists() else tmp
        shutil.move(str(src), str(directory / f"{name}-lora"))
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.eval()
    return peft_model


def eager_vision(model) -> None:
    """transformers' SDPA vision path runs *causal* attention when a batch has no padded patch
    (``Phi4MultimodalVisionAttention.is_causal = True`` and the all-ones mask is dropped), which is
    not SigLIP; its eager path is bidirectional. The reference is run on the eager path."""
    for m in model.modules():
        if type(m).__name__ == "Phi4MultimodalVisionModel":
            m.config._attn_implementation = "eager"


def reference_logits(peft_model, batch: dict, adapter: str | None) -> torch.Tensor:
    kwargs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        if adapter is None:
            with peft_model.disable_adapter():
                return peft_model(**kwargs).logits
        peft_model.set_adapter(adapter)
        return peft_model(**kwargs).logits


@pytest.fixture(scope="session")
def reference_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref") / "phi4_multimodal"
    d.mkdir()
    cfg = tiny_config()
    peft_model = make_reference_checkpoint(d, cfg)
    return d, peft_model, cfg
