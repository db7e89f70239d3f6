"""The decoding loop: one prefill, then one token per step with a KV cache; per-row routes fixed."""
from __future__ import annotations

import torch

from .kv_cache import GrowingCache


def decode_loop(model, input_ids, attention_mask=None, *, max_new_tokens=32, eos_token_ids=None,
                logits_processor=None, sampler=None, streamer=None, **media) -> torch.Tensor:
    device = model.device
    input_ids = input_ids.to(device)
    B = input_ids.shape[0]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.to(device)
    eos = torch.tensor(eos_token_ids if eos_token_ids is not None else model.config.backbone.eos_token_ids,
                       device=device)
    pad = model.config.backbone.pad_token_id
    row_types = model.row_types(input_ids)
    cache = GrowingCache(reserve=max_new_tokens)  # decode steps write in place, no per-step concatenation
    out = model(input_ids, attention_mask, cache=cache, use_cache=True, row_types=row_types,
                logits_to_keep=1, **media)
    positions = attention_mask.long().sum(-1, keepdim=True) - 1
    step_route = model.step_route(row_types)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    generated = []
    history = input_ids
    for _ in range(max_new_tokens):
        scores = out.logits[:, -1]
        if logits_processor is not None or sampler is not None:  # greedy argmax needs no float32 copy
            scores = scores.float()
        if logits_processor is not None:
            scores = logits_processor(history, scores)
        nxt = sampler(scores) if sampler is not None else scores.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        generated.append(nxt)
        if streamer is not None:
            streamer(nxt, done)
        done = done | torch.isin(nxt, eos)
        if bool(done.all()) or len(generated) == max_new_tokens:  # no forward for a token nobody reads
            break
        if logits_processor is not None:  # the only reader of the history
            history = torch.cat([history, nxt[:, None]], 1)
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], 1)
        positions = positions + 1
        out = model(nxt[:, None], attention_mask, position_ids=positions, cache=out.cache,
                    use_cache=True, row_types=row_types, route=step_route)
    return torch.stack(generated, 1) if generated else input_ids.new_zeros(B, 0)
