"""Token choice for generation: greedy, or sampling with temperature / top-k / top-p, and a
repetition penalty (CTRL's: divide positive logits, multiply negative ones, of seen tokens)."""
from __future__ import annotations

import torch

from .errors import ArgumentError


def repetition_penalty(history: torch.Tensor, scores: torch.Tensor, penalty: float) -> torch.Tensor:
    if penalty == 1.0:
        return scores
    seen = torch.gather(scores, 1, history)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return scores.scatter(1, history, seen)


class Sampler:
    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None):
        if not temperature > 0:
            raise ArgumentError(f"must be > 0 for sampling (use greedy decoding instead), got {temperature!r}",
                                "temperature")
        if not 0 < top_p <= 1:
            raise ArgumentError(f"must be in (0, 1], got {top_p!r}", "top_p")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise ArgumentError(f"must be an integer >= 0 (0: no top-k cut), got {top_k!r}", "top_k")
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.generator = None
        if seed is not None:
            self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float() / self.temperature
        if self.top_k and self.top_k < scores.shape[-1]:
            kth = scores.topk(self.top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_scores, order = scores.sort(dim=-1, descending=True)
            cum = sorted_scores.softmax(-1).cumsum(-1)
            drop = cum - sorted_scores.softmax(-1) > self.top_p  # keep the smallest set reaching top_p
            sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
            scores = torch.full_like(scores, float("-inf")).scatter(1, order, sorted_scores)
        probs = scores.softmax(-1).cpu()
        return torch.multinomial(probs, 1, generator=self.generator).flatten().to(scores.device)
