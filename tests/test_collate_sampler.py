"""Collation (media loading, skip/strict rules, preference pairs, SpecAugment) and the
length-grouped, resumable global-batch sampler with its per-rank shards."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import drawn_image, synth_audio
from molora import MoLoRAConfig, MoLoRAProcessor
from molora.errors import AudioError, ImageError, MediaError, MoLoRAError
from molora.stages.collate import Collator
from molora.data.manifest import Sample, read_manifest
from molora.stages.sampler import LengthGroupedBatches, shard


@pytest.fixture(scope="module")
def proc():
    return MoLoRAProcessor.from_config(MoLoRAConfig.preset("tiny"))


@pytest.fixture()
def manifest(tmp_path) -> Path:
    sf.write(tmp_path / "good.wav", synth_audio(0.6), 16000)
    drawn_image(40, 30).save(tmp_path / "good.png")
    (tmp_path / "corrupt.png").write_bytes(b"this is not an image at all")
    rows = [{"audio": "good.wav", "text": "hello"},
            {"image": "corrupt.png", "question": "what?", "answers": ["x"]},
            {"image": "good.png", "question": "color?", "answers": ["red"]},
            {"audio": "missing.wav", "text": "gone"},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    p = tmp_path / "train.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    return p


def test_collator_skips_bad_media_and_reports(proc, manifest):
    samples = read_manifest(manifest)
    col = Collator(proc)
    batch = col(samples)
    assert batch["input_ids"].shape[0] == 3
    assert col.num_skipped == 2
    src = str(manifest.resolve())
    assert [s["source"] for s in col.skipped] == [f"{src}:2", f"{src}:4"]
    assert col.skipped[0]["item"].endswith("corrupt.png") and "corrupt" in col.skipped[0]["reason"]
    assert col.skipped[1]["item"].endswith("missing.wav") and "not found" in col.skipped[1]["reason"]
    # the kept rows are exactly the good ones, in order: audio, image, text
    assert batch["audio_input_features"].shape[0] == 1 and batch["image_pixel_values"].shape[0] == 1
    good = proc([s.messages for s in (samples[0], samples[2], samples[4])], return_labels=True)
    assert torch.equal(batch["input_ids"], good["input_ids"]) and torch.equal(batch["labels"], good["labels"])
    assert int(batch["num_label_tokens"]) == int((good["labels"][:, 1:] != -100).sum())
    # all bad -> None, counted
    assert col([samples[1], samples[3]]) is None and col.num_skipped == 2  # met again: listed once


def test_collator_strict_raises_with_source(proc, manifest):
    samples = read_manifest(manifest)
    with pytest.raises(ImageError) as e:
        Collator(proc, strict=True)(samples)
    assert f"{manifest.resolve()}:2" in str(e.value) and "corrupt.png" in str(e.value)
    with pytest.raises(AudioError, match=r"train\.jsonl:4"):
        Collator(proc, strict=True)([samples[0], samples[3]])


def test_processor_media_checks_skip_only_the_culprit(proc):
    ok = Sample([{"role": "user", "content": [{"type": "audio", "audio": (synth_audio(0.4), 16000)}]},
                 {"role": "assistant", "content": "a"}], "chat", "mem:0")
    short = Sample([{"role": "user", "content": [{"type": "audio", "audio": (synth_audio(0.01), 16000)}]},
                    {"role": "assistant", "content": "b"}], "chat", "mem:1")
    col = Collator(proc)
    batch = col([ok, short])
    assert batch["input_ids"].shape[0] == 1
    assert col.skipped == [{"source": "mem:1", "item": "audio[0]", "reason": col.skipped[0]["reason"]}]
    assert "too short" in col.skipped[0]["reason"]
    # non-media problems are never skipped
    bad = Sample([{"role": "robot", "content": "x"}], "chat", "mem:2")
    with pytest.raises(MoLoRAError) as e:
        col([ok, bad])
    assert not isinstance(e.value, MediaError)


def test_preference_labels_only_replies(proc, tmp_path):
    sf.write(tmp_path / "q.wav", synth_audio(0.5), 16000)
    rows = [{"messages": [{"role": "user", "content": [{"type": "audio", "audio": "q.wav"},
                                                       {"type": "text", "text": "say?"}]}],
             "chosen": "good answer", "rejected": "bad"},
            {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "pick one"}],
             "chosen": "A", "rejected": "B!"},
            {"messages": [{"role": "user", "content": [{"type": "audio", "audio": "nope.wav"}]}],
             "chosen": "x", "rejected": "y"}]
    (tmp_path / "pref.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    samples = read_manifest(tmp_path / "pref.jsonl")
    col = Collator(proc)
    pair = col.collate_preference(samples)
    assert col.num_skipped == 1 and col.skipped[0]["source"].endswith("pref.jsonl:3")
    for key, replies in (("chosen", ["good answer", "A"]), ("rejected", ["bad", "B!"])):
        b = pair[key]
        for i, reply in enumerate(replies):
            lab = b["labels"][i]
            assert proc.tokenizer.decode(lab[lab != -100]) == reply + "<|end|>"
        assert int(b["num_label_tokens"]) == int((b["labels"][:, 1:] != -100).sum())
    # same prompt tokens in both
    for i in range(2):
        c, r = pair["chosen"], pair["rejected"]
        n = int((c["labels"][i] == -100).long().argmin())  # first labelled position
        assert torch.equal(c["input_ids"][i, :n], r["input_ids"][i, :n])
    with pytest.raises(MoLoRAError, match="collate_preference"):
        col(samples[:1])


def _audio_samples(lengths):
    return [Sample([{"role": "user", "content": [{"type": "audio", "audio": (synth_audio(s, seed=k), 16000)}]},
                    {"role": "assistant", "content": "t"}], "chat", f"mem:{k}") for k, s in enumerate(lengths)]


def test_spec_augment_touches_only_valid_frames_and_is_seeded(proc):
    samples = _audio_samples([0.3, 1.2])
    plain = Collator(proc)(samples)["audio_input_features"]
    spec = {"freq_mask_param": 10, "time_mask_param": 20, "num_freq_masks": 2, "num_time_masks": 2}
    col = Collator(proc, spec_augment=spec)
    torch.manual_seed(0)
    a = col(samples)
    torch.manual_seed(0)
    b = col(samples)
    torch.manual_seed(1)
    c = col(samples)
    fa = a["audio_input_features"]
    assert torch.equal(fa, b["audio_input_features"])           # reproducible under a seed
    assert not torch.equal(fa, c["audio_input_features"])       # and actually random
    valid = a["audio_attention_mask"]
    changed = fa != plain
    assert changed.any()
    assert not changed[~valid].any()                            # padding frames untouched
    assert (fa[changed] == 0).all()                             # masked cells hold the mask value
    assert torch.equal(a["input_ids"], Collator(proc)(samples)["input_ids"])
    # rng-state resume: restoring the state reproduces the next augmented batch bit for bit
    torch.manual_seed(3)
    col(samples)
    state = torch.get_rng_state()
    nxt = col(samples)["audio_input_features"]
    torch.set_rng_state(state)
    assert torch.equal(col(samples)["audio_input_features"], nxt)
    with pytest.raises(MoLoRAError, match="spec_augment.freq_mask: unknown key"):
        Collator(proc, spec_augment={"freq_mask": 3})


# ----------------------------------------------------------------------------------------
# sampler
# ----------------------------------------------------------------------------------------
LENGTHS = [int(x) for x in torch.randint(1, 1000, (103,), generator=torch.Generator().manual_seed(0))]


@pytest.mark.parametrize("group", [True, False])
def test_sampler_deterministic_and_covers_epoch(group):
    a = LengthGroupedBatches(LENGTHS, 8, seed=7, group_by_length=group, mega_batch_mult=4)
    b = LengthGroupedBatches(LENGTHS, 8, seed=7, group_by_length=group, mega_batch_mult=4)
    e0, e1 = list(a), list(a)
    assert e0 == list(b) and e1 == list(b)
    assert e0 != e1 and len(e0) == len(a) == 13
    for ep in (e0, e1):
        assert sorted(i for bt in ep for i in bt) == list(range(103))
        assert sorted(len(bt) for bt in ep)[0] == 103 % 8 and sum(len(bt) == 8 for bt in ep) == 12
    assert e0 != list(LengthGroupedBatches(LENGTHS, 8, seed=8, group_by_length=group, mega_batch_mult=4))
    d = LengthGroupedBatches(LENGTHS, 8, seed=7, group_by_length=group, drop_last=True)
    assert len(d) == 12 and all(len(bt) == 8 for bt in d)
    with pytest.raises(MoLoRAError):
        LengthGroupedBatches([1, 2], 8, seed=0, drop_last=True)


def test_sampler_resume_equivalence():
    ref = LengthGroupedBatches(LENGTHS, 8, seed=3, mega_batch_mult=2)
    expected = list(itertools.islice(ref.batches(), 40))  # crosses three epoch boundaries
    for k in (0, 1, 12, 13, 14, 26, 39):
        s = LengthGroupedBatches(LENGTHS, 8, seed=3, mega_batch_mult=2)
        it = s.batches()
        assert list(itertools.islice(it, k)) == expected[:k]
        state = s.state_dict()
        r = LengthGroupedBatches(LENGTHS, 8, seed=3, mega_batch_mult=2)
        r.load_state_dict(json.loads(json.dumps(state)))
        assert list(itertools.islice(r.batches(), 40 - k)) == expected[k:], k
    assert ref.state_dict() == {"epoch": 3, "position": 1}


def test_length_grouping_makes_homogeneous_batches():
    grouped = list(LengthGroupedBatches(LENGTHS, 8, seed=0, mega_batch_mult=100))  # one mega-batch
    spans = sorted((min(LENGTHS[i] for i in b), max(LENGTHS[i] for i in b)) for b in grouped)
    for (lo1, hi1), (lo2, hi2) in zip(spans, spans[1:]):
        assert hi1 <= lo2  # batches are disjoint length ranges
    assert max(LENGTHS[i] for i in grouped[0]) == max(LENGTHS)  # longest batch first

    def mean_spread(batches):
        return sum(max(LENGTHS[i] for i in b) - min(LENGTHS[i] for i in b) for b in batches) / len(batches)

    local = list(LengthGroupedBatches(LENGTHS, 8, seed=0, mega_batch_mult=4))
    flat = list(LengthGroupedBatches(LENGTHS, 8, seed=0, group_by_length=False))
    assert mean_spread(grouped) < mean_spread(local) < mean_spread(flat) / 2


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 60), world=st.integers(1, 9), micro=st.integers(1, 5))
def test_shard_partitions_the_global_batch(n, world, micro):
    batch = [int(x) for x in torch.randperm(1000)[:n]]
    shares = [shard(batch, r, world, micro) for r in range(world)]
    assert all(len(s) == micro for s in shares)
    assert [i for s in shares for mb in s for i in mb] == batch
    sizes = [sum(len(mb) for mb in s) for s in shares]
    assert max(sizes) - min(sizes) <= 1
    assert shares == [LengthGroupedBatches.shard(list(batch), r, world, micro) for r in range(world)]


def test_undecodable_hub_media_is_a_collate_time_skip(proc, tmp_path):
    import io

    from datasets import Dataset, Image

    from molora.data.hf_datasets import read_hf_dataset

    buf = io.BytesIO()
    drawn_image(40, 30).save(buf, format="PNG")
    ds = Dataset.from_dict({"image": [{"bytes": buf.getvalue(), "path": None}, {"bytes": b"junk", "path": None}],
                            "question": ["a", "b"], "answers": [["x"], ["y"]]}).cast_column("image", Image())
    ds.save_to_disk(str(tmp_path / "vqa"))
    samples = list(read_hf_dataset(tmp_path / "vqa", split="train", kind="vqa"))  # the stream does not stop
    col = Collator(proc)
    assert col(samples)["input_ids"].shape[0] == 1
    assert col.num_skipped == 1 and col.skipped[0]["source"] == f"{tmp_path / 'vqa'}[train] row 2"
    assert "not a readable image" in col.skipped[0]["reason"]


@pytest.mark.parametrize("seed", range(6))
def test_mask_band_draws_as_torchaudio(seed):
    """molora's band masking is torchaudio's FrequencyMasking / TimeMasking, draw for draw."""
    import torchaudio.transforms as T

    from molora.stages.collate import mask_band_

    feats = torch.randn(37, 80, generator=torch.Generator().manual_seed(seed)) + 5  # [frames, mels]
    ref = feats.T.unsqueeze(0)  # torchaudio's (..., freq, time)
    torch.manual_seed(seed)
    for _ in range(2):
        ref = T.FrequencyMasking(27)(ref)
    for _ in range(3):
        ref = T.TimeMasking(10)(ref)
    ours = feats.clone()
    g = torch.Generator().manual_seed(seed)
    for _ in range(2):
        mask_band_(ours, 27, 1, g)
    for _ in range(3):
        mask_band_(ours, 10, 0, g)
    assert torch.equal(ours, ref[0].T) and not torch.equal(ours, feats)


def test_spec_augment_with_a_seed_follows_the_row_not_the_batch(proc):
    """With ``augment_seed`` a clip's masks depend on the seed and the row's source only: the same
    in any batch, position or process, and other masks under another seed."""
    a, b, c = _audio_samples([0.9, 1.2, 0.6])
    spec = {"freq_mask_param": 10, "time_mask_param": 20, "num_freq_masks": 2, "num_time_masks": 2}
    col = Collator(proc, spec_augment=spec)

    frames = Collator(proc)([a])["audio_input_features"].shape[1]  # clip a's frames (alone: no padding)

    def clip(batch_samples, which, seed=5):
        batch = col(batch_samples, augment_seed=seed)
        i = [s.source for s in batch_samples].index(which.source)
        return batch["audio_input_features"][i, :frames]

    alone = clip([a], a)
    torch.manual_seed(0)
    assert torch.equal(clip([b, a, c], a), alone)
    torch.manual_seed(1)  # the global RNG plays no part
    assert torch.equal(clip([a, c], a), alone)
    assert not torch.equal(clip([a], a, seed=6), alone)
    plain = Collator(proc)([a])["audio_input_features"][0, :alone.shape[0]]
    assert not torch.equal(alone, plain) and ((alone == plain) | (alone == 0)).all()
