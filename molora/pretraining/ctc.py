"""The conformer's own phase: global CMVN from the training clips, then word-level CTC over the speech
corpus's closed vocabulary through a throw-away linear head (greedy-decoded WER on held-out clips)."""
from __future__ import annotations

import random

import soundfile as sf
import torch
import torch.nn.functional as F

from molora.eval import normalize_english
from molora.eval.wer import word_error_rate

from .loop import run_phase, settings, train_only


def audio_features(processor, samples) -> list[torch.Tensor]:
    """The log-mel features [frames, mels] of each speech sample's clip (padding frames dropped)."""
    feats = []
    for s in samples:
        path = next(p["audio"] for m in s.messages if isinstance(m["content"], list) for p in m["content"]
                    if p.get("type") == "audio")
        wav, sr = sf.read(path, dtype="float32")
        f = processor.audio_processor([(wav, sr)])
        n = int(f["audio_attention_mask"][0].sum()) if "audio_attention_mask" in f else f["audio_input_features"].shape[1]
        feats.append(f["audio_input_features"][0, :n].clone())
    return feats


def pad_features(feats) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of different lengths as one zero-padded batch [B, T, mels] and its mask [B, T]."""
    t = max(f.shape[0] for f in feats)
    x = torch.zeros(len(feats), t, feats[0].shape[1])
    mask = torch.zeros(len(feats), t, dtype=torch.bool)
    for i, f in enumerate(feats):
        x[i, : f.shape[0]] = f
        mask[i, : f.shape[0]] = True
    return x, mask


def ctc_words(text: str) -> str:
    """A written transcript as the words of the word-level CTC head (the leaderboard normaliser's form: lower
    case, no punctuation; numbers and money as it writes them)."""
    return normalize_english(text)


def set_cmvn(model, feats) -> None:
    """The encoder's global CMVN statistics from the training features (as the real encoder ships them)."""
    allf = torch.cat(feats)
    emb = model.audio_embed.encoder.encoder_embedding
    emb.global_mean.copy_(allf.mean(0))
    emb.global_invstd.copy_(1.0 / allf.std(0).clamp_min(1e-3))


def ctc_wer(enc, head, feats, texts, vocab) -> float:
    """Greedy CTC word error rate (%) of the encoder + head on held-out clips."""
    hyps = []
    was = enc.training
    enc.eval()
    with torch.no_grad():
        for i in range(0, len(feats), 50):
            x, mask = pad_features(feats[i: i + 50])
            hidden, valid = enc(x, mask)
            ids = head(hidden).argmax(-1)
            for j in range(ids.shape[0]):
                words, prev = [], 0
                for t in ids[j, : int(valid[j].sum())].tolist():
                    if t != prev and t != 0:
                        words.append(vocab[t - 1])
                    prev = t
                hyps.append(" ".join(words))
    enc.train(was)
    return word_error_rate(texts, hyps)


def pretrain_ctc(model, feats, texts, vocab, steps: int, batch: int, lr: float, rng: random.Random, losses: list,
                 held_out=None) -> torch.nn.Linear:
    """Phase 2: the conformer learns word-level CTC on ``feats`` / ``texts`` (``vocab``: the head's
    words, blank = 0); logs the held-out WER (``held_out``: (features, texts)). Returns the head."""
    enc = model.audio_embed.encoder
    head = torch.nn.Linear(enc.config.hidden_size, len(vocab) + 1)
    index = {w: i + 1 for i, w in enumerate(vocab)}
    targets = [torch.tensor([index[w] for w in t.split()]) for t in texts]
    named = train_only(model, ["audio_encoder"]) + [(f"head.{n}", p) for n, p in head.named_parameters()]
    enc.train()

    def step_loss(step: int):
        idx = [rng.randrange(len(feats)) for _ in range(batch)]
        x, mask = pad_features([feats[i] for i in idx])
        hidden, valid = enc(x, mask)
        logp = head(hidden).log_softmax(-1).transpose(0, 1)
        tg = [targets[i] for i in idx]
        return F.ctc_loss(logp, torch.cat(tg), valid.sum(1), torch.tensor([len(t) for t in tg]), zero_infinity=True)

    def wer() -> str:
        return f" held-out WER {ctc_wer(enc, head, *held_out, vocab):.1f}%" if held_out else ""

    run_phase(named, settings(lr), steps, step_loss, losses, "ctc", 500, wer)
    return head
