"""Per-sample routing: a padded batch mixing text, image, speech and image+speech rows gives
every row what it gets alone, in forward and in greedy generation; transformers' batch-level
choice does not; gradients reach only the adapters the batch's rows use."""
from __future__ import annotations

import pytest
import torch

from conftest import drawn_image, eager_vision, randomize_, reference_logits, synth_audio, user_content
from molora import MoLoRAConfig, MoLoRAModel, MoLoRAProcessor

TOL = 1e-4


def user(*parts):
    return [{"role": "user", "content": user_content(*parts)}]


MIXED = [
    user("a plain text question that is rather long, to force padding elsewhere"),
    user(drawn_image(90, 40, 1), "what is drawn?"),
    user((synth_audio(1.1, seed=2), 16000), "Transcribe the audio clip into text."),
    user(drawn_image(60, 120, 3), (synth_audio(0.7, seed=3), 16000), "answer"),
]
TYPES = ["text", "image", "speech", "image+speech"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = MoLoRAConfig.preset("tiny")
    model = MoLoRAModel(cfg).eval()
    randomize_(model, seed=1)  # adapters non-zero, so routing matters
    return model, MoLoRAProcessor.from_config(cfg)


def _solo_logits(model, proc, conv):
    b = proc([conv])
    with torch.no_grad():
        return model(**b).logits[0]


@pytest.mark.parametrize("side", ["left", "right"])
def test_mixed_batch_rows_equal_solo(tiny, side):
    model, proc = tiny
    batch = proc(MIXED, padding_side=side)
    assert model.row_types(batch["input_ids"]) == TYPES
    with torch.no_grad():
        logits = model(**batch).logits
    for i, conv in enumerate(MIXED):
        solo = _solo_logits(model, proc, conv)
        mask = batch["attention_mask"][i].bool()
        assert (logits[i][mask] - solo).abs().max().item() <= TOL, TYPES[i]


def test_mixed_batch_generation_equals_solo(tiny):
    model, proc = tiny
    batch = proc(MIXED)
    out = model.generate(**batch, max_new_tokens=8)
    for i, conv in enumerate(MIXED):
        solo = model.generate(**proc([conv]), max_new_tokens=8)[0]
        n = solo.shape[0]
        assert out[i, :n].tolist() == solo.tolist(), TYPES[i]


def test_routing_changes_the_answer(tiny):
    """Sanity: the adapters are not no-ops, so the test above could fail."""
    model, proc = tiny
    b = proc([MIXED[2]])
    with torch.no_grad():
        routed = model(**b).logits
        forced = model(**b, row_types=["text"]).logits
    assert (routed - forced).abs().max().item() > 1e-2


def test_transformers_batch_level_choice_is_wrong(tiny, tmp_path):
    """transformers + peft must pick one adapter (and one audio projector) per batch: the speech
    row of a mixed batch then gets the vision adapter and the vision-speech projector."""
    from peft import PeftModel
    from transformers import Phi4MultimodalForCausalLM

    model, proc = tiny
    model.save_pretrained(tmp_path / "native", layout="phi4_multimodal")
    base = Phi4MultimodalForCausalLM.from_pretrained(str(tmp_path / "native")).eval()
    eager_vision(base)
    ref = PeftModel.from_pretrained(base, str(tmp_path / "native" / "vision-lora"), adapter_name="vision")
    ref.load_adapter(str(tmp_path / "native" / "speech-lora"), adapter_name="speech")
    ref.eval()
    batch = proc(MIXED, padding_side="right")  # transformers ignores left padding in positions
    ref_batch = reference_logits(ref, batch, "vision")  # images present: the batch gets "vision"
    ours = model(**batch).logits.detach()
    speech_row = 2
    mask = batch["attention_mask"][speech_row].bool()
    solo_ref = reference_logits(ref, proc([MIXED[speech_row]]), "speech")[0]
    assert (ours[speech_row][mask] - solo_ref).abs().max().item() <= TOL  # molora: right
    assert (ref_batch[speech_row][mask] - solo_ref).abs().max().item() > 1e-2  # reference: wrong


def test_gradients_reach_only_used_adapters(tiny):
    model, proc = tiny
    model.train()
    try:
        conv = [MIXED[0][0], {"role": "assistant", "content": "ok"}]
        speech = [MIXED[2][0], {"role": "assistant", "content": "words"}]
        batch = proc([conv, speech], return_labels=True)
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if ".lora_" in n}
        assert all(g is None for n, g in grads.items() if ".vision." in n)
        assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".speech." in n)
        base = [p for n, p in model.language_model.named_parameters() if ".lora_" not in n]
        assert all(not p.requires_grad and p.grad is None for p in base)
        # the vision-speech projector is untouched by a batch without images
        assert all(p.grad is None for p in model.audio_embed.audio_projection["vision"].parameters())
        assert all(p.grad is not None for p in model.audio_embed.audio_projection["speech"].parameters())
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)


def test_activation_checkpointing_keeps_per_row_routes():
    """Recomputation in backward happens after the forward's routing context closed: the routes
    must be restored for it, or the gradients of a mixed batch would be wrong."""
    cfg = MoLoRAConfig.preset("tiny")
    proc = MoLoRAProcessor.from_config(cfg)
    convs = [[*MIXED[i], {"role": "assistant", "content": "ok " * (i + 1)}] for i in range(4)]
    batch = proc(convs, return_labels=True)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = MoLoRAModel(cfg).train()
        randomize_(model, seed=1)
        if ckpt:
            model.enable_activation_checkpointing()
        model(**batch).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any(".lora_A.vision." in n for n in grads[0])
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n


def test_a_new_adapter_is_a_config_change(tmp_path):
    """A third adapter (and audio projector) for image+speech rows: only the config changes."""
    from molora.config import LoraSpec, RouterEntry

    base = MoLoRAConfig.preset("tiny")
    cfg = base.replace(
        adapters={**base.adapters, "vision_speech": LoraSpec(r=4, alpha=8)},
        router={**base.router, "image+speech": RouterEntry(adapter="vision_speech", audio_projector="joint")},
        audio_projectors=["speech", "vision", "joint"])
    torch.manual_seed(0)
    model = MoLoRAModel(cfg).eval()
    randomize_(model, seed=2)
    proc = MoLoRAProcessor.from_config(cfg)
    batch = proc(MIXED)
    with torch.no_grad():
        logits = model(**batch).logits
    for i, conv in enumerate(MIXED):
        solo = _solo_logits(model, proc, conv)
        assert (logits[i][batch["attention_mask"][i].bool()] - solo).abs().max().item() <= TOL
    model.train()
    train_batch = proc([[*MIXED[3], {"role": "assistant", "content": "x"}]], return_labels=True)
    model(**train_batch).loss.backward()
    used = {n.split(".lora_")[1].split(".")[1] for n, p in model.named_parameters() if ".lora_" in n and p.grad is not None}
    assert used == {"vision_speech"}
    assert all(p.grad is not None for p in model.audio_embed.audio_projection["joint"].parameters())
    model.save_pretrained(tmp_path / "m")
    again = MoLoRAModel.from_pretrained(str(tmp_path / "m")).eval()
    with torch.no_grad():
        assert torch.equal(again(**batch).logits, model.eval()(**batch).logits)
    assert (tmp_path / "m" / "vision_speech-lora" / "adapter_config.json").exists()


def test_labelled_positions_loss_equals_full_logits_loss(tiny):
    model, proc = tiny
    batch = proc([[*c, {"role": "assistant", "content": "fine"}] for c in MIXED], return_labels=True)
    with torch.no_grad():
        full = model(**batch)
        lean = model(**batch, return_logits=False)
        summed = model(**batch, return_logits=False, loss_reduction="sum")
    assert lean.logits is None
    assert torch.allclose(full.loss, lean.loss, atol=1e-6)
    n = int((batch["labels"][:, 1:] != -100).sum())
    assert torch.allclose(summed.loss / n, full.loss, atol=1e-6)


def test_merged_inference_matches_routed(tiny):
    model, proc = tiny
    speech = proc([MIXED[2]])
    mixed = proc(MIXED)
    with torch.no_grad():
        ref_logits = model(**speech).logits
        ref_tokens = model.generate(**speech, max_new_tokens=8)
        ref_mixed = model(**mixed).logits
        model.set_merged_inference(True)
        try:
            assert (model(**speech).logits - ref_logits).abs().max().item() <= 1e-5
            assert torch.equal(model.generate(**speech, max_new_tokens=8), ref_tokens)
            assert torch.equal(model(**mixed).logits, ref_mixed)  # mixed batches never merge
            layer = next(iter(model.lora_layers().values()))
            assert "speech" in layer._merged
        finally:
            model.set_merged_inference(False)
