"""Greedy decode tokens/s of a quantised frozen base (int8 / int4 / nf4) against bfloat16, and the kernel
each quantised linear ran (molora/quantized_linear.py), with the logits' cosine and top-1 agreement to
bfloat16 on the prompt.

    .venv/bin/python benchmarks/bench_quantized.py [--preset small] [--tokens 48] [--schemes int8,int4]

One process, the models one after another; batch 1, a 24-token text prompt, no EOS stop. The `small`
preset's decoder is 768 wide: its linears are small enough that the per-call overhead of the decode loop
counts for much more than at full size (3072 wide), where reading the weights bounds a step.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from molora import MoLoRAModel
from molora.quantized_linear import kernels_used


def decode_rate(model, batch, tokens: int, repeats: int) -> float:
    model.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=4, eos_token_ids=[])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        model.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=tokens, eos_token_ids=[])
        best = min(best, time.perf_counter() - t)
    return tokens / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--schemes", default="int8,int4,nf4")
    args = ap.parse_args()
    ids = torch.randint(32, 127, (1, 24), generator=torch.Generator().manual_seed(0))  # printable bytes: text ids
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    rows, ref_logits, base_rate = [], None, None
    for scheme in ["bf16", *args.schemes.split(",")]:
        q = None if scheme == "bf16" else scheme
        model = MoLoRAModel.from_pretrained(args.preset, dtype=torch.bfloat16, quantization_config=q).eval()
        with torch.no_grad():
            logits = model(**batch).logits[0].float()
        rate = decode_rate(model, batch, args.tokens, args.repeats)
        row = {"scheme": scheme, "tokens_per_s": round(rate, 1), "kernels": kernels_used(model) or {"bf16 matmul": 0}}
        if ref_logits is None:
            ref_logits, base_rate = logits, rate
        else:
            row["speedup_vs_bf16"] = round(rate / base_rate, 2)
            row["logits_cosine"] = round(float(torch.nn.functional.cosine_similarity(logits, ref_logits, -1).mean()), 5)
            row["top1_agreement"] = round(float((logits.argmax(-1) == ref_logits.argmax(-1)).float().mean()), 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
        del model
    print(f"\npreset {args.preset}, batch 1, {args.tokens} new tokens, best of {args.repeats}, "
          f"{torch.get_num_threads()} threads")
    for r in rows:
        extra = "" if r["scheme"] == "bf16" else (f"  x{r['speedup_vs_bf16']}  cos {r['logits_cosine']}  "
                                                   f"top-1 {r['top1_agreement']}")
        print(f"{r['scheme']:>5}: {r['tokens_per_s']:8.1f} tok/s{extra}  kernels {r['kernels']}")


if __name__ == "__main__":
    main()
