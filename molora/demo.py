"""`molora demo`: the model core alone, end to end, offline (`make demo` runs `molora quickstart`).

Builds the tiny preset, draws an image with Pillow, speaks a sentence with espeak-ng, runs one
padded batch that mixes text / image / speech / image+speech conversations through the
processor and the per-sample routed model, generates for every row, and round-trips the model
through all three checkpoint layouts.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from molora.prompts import ASR_PROMPT


def _chart() -> Image.Image:
    img = Image.new("RGB", (160, 96), "white")
    d = ImageDraw.Draw(img)
    for i, (h, c) in enumerate([(60, "red"), (30, "green"), (80, "blue")]):
        d.rectangle([20 + 45 * i, 90 - h, 50 + 45 * i, 90], fill=c)
    d.text((4, 2), "sales 2026", fill="black")
    return img


def main() -> None:
    from molora import Chat, MoLoRAConfig, MoLoRAModel, MoLoRAProcessor
    from molora.synthetic.speech import speak

    torch.manual_seed(0)
    cfg = MoLoRAConfig.preset("tiny")
    model = MoLoRAModel(cfg).eval()
    proc = MoLoRAProcessor.from_config(cfg)
    counts = model.parameter_counts()
    print("molora demo: tiny preset,", sum(counts.values()), "parameters:",
          ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))

    clip = speak("the red bar is the second tallest", voice="en-us", rate=160)
    chart = _chart()
    print(f"synthesised {len(clip) / 16000:.2f} s of speech with espeak-ng; drew a {chart.size} chart")
    convs = [
        [{"role": "user", "content": "Say something."}],
        [{"role": "user", "content": [{"type": "image", "image": chart}, {"type": "text", "text": "Which bar is tallest?"}]}],
        [{"role": "user", "content": [{"type": "audio", "audio": (clip, 16000)},
                                      {"type": "text", "text": ASR_PROMPT}]}],
        [{"role": "user", "content": [{"type": "image", "image": chart}, {"type": "audio", "audio": (clip, 16000)}]}],
    ]
    t0 = time.perf_counter()
    batch = proc(convs)
    t1 = time.perf_counter()
    print(f"processor: batch {tuple(batch['input_ids'].shape)}, "
          f"{batch['image_pixel_values'].shape[0]} images -> pixel values {tuple(batch['image_pixel_values'].shape)}, "
          f"{batch['audio_input_features'].shape[0]} clips -> log-mel {tuple(batch['audio_input_features'].shape)} "
          f"({(t1 - t0) * 1000:.0f} ms)")
    types = model.row_types(batch["input_ids"])
    print("per-row routes:")
    for i, t in enumerate(types):
        r = cfg.router[t]
        print(f"  row {i}: {t:13s} -> adapter {str(r.adapter):6s}  audio projector {r.audio_projector}")
    chat = Chat(model, proc)
    t0 = time.perf_counter()
    outs = chat.generate(convs, max_new_tokens=12)
    print(f"generated 12 tokens for 4 mixed rows in {time.perf_counter() - t0:.2f} s "
          "(random weights: the text is noise until the stages train it)")
    for t, o in zip(types, outs):
        print(f"  {t:13s} {o!r}")
    with tempfile.TemporaryDirectory() as d:
        ref = model(**batch).logits
        for layout in ("molora", "phi4mm", "phi4_multimodal"):
            model.save_pretrained(Path(d) / layout, layout=layout)
            again = MoLoRAModel.from_pretrained(str(Path(d) / layout)).eval()
            diff = (again(**batch).logits - ref).abs().max().item()
            print(f"saved + reloaded as {layout:16s} max |logit diff| = {diff:.2e}")
    print("done.")


if __name__ == "__main__":
    with torch.no_grad():
        main()
