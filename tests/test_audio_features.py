"""Log-mel front end: equality with transformers' extractor, the original processor's 8 kHz
path, resampling, down-mixing, the two mel banks, and one clear error per bad input."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from molora.config import AudioConfig
from molora.encoders.audio_features import (
    AudioFeatureExtractor,
    audio_frame_count,
    audio_token_count,
    load_audio,
    original_mel_filters,
    transformers_mel_filters,
)
from molora.errors import AudioError

transformers = pytest.importorskip("transformers")
from transformers import Phi4MultimodalFeatureExtractor  # noqa: E402


@pytest.fixture(scope="module")
def hf():
    return Phi4MultimodalFeatureExtractor()


@pytest.fixture(scope="module")
def ext_tf():
    return AudioFeatureExtractor(AudioConfig(mel_filter="transformers"))


@pytest.fixture(scope="module")
def ext():
    return AudioFeatureExtractor(AudioConfig())  # default: the original bank


def chirp(sr: int, seconds: float, f0: float = 50.0, f1: float = 7900.0, amp: float = 0.5) -> np.ndarray:
    """Exponential sweep f0 -> f1, the same continuous signal at any rate."""
    t = np.arange(int(round(seconds * sr))) / sr
    k = np.log(f1 / f0) / seconds
    return (amp * np.sin(2 * np.pi * f0 * (np.exp(k * t) - 1) / k)).astype(np.float32)


def doc_clip() -> np.ndarray:
    """The clip the module docstring quotes the mel-bank difference for."""
    rng = np.random.default_rng(0)
    return (chirp(16000, 2.0) + 0.025 * rng.standard_normal(32000)).astype(np.float32)


def original_reference(wav: np.ndarray, fs: int, mel: np.ndarray) -> np.ndarray:
    """The original processing_phi4mm.py feature definition, clip by clip in numpy."""
    win, hop, n_fft = {16000: (400, 160, 512), 8000: (200, 80, 256)}[fs]
    n = (len(wav) - win) // hop + 1
    frames = wav[np.arange(win)[None, :] + hop * np.arange(n)[:, None]].astype(np.float32)
    prev = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = (frames - np.float32(0.97) * prev) * np.float32(32768)
    spec = np.fft.rfft(np.hamming(win) * frames, n=n_fft, axis=1).astype(np.complex64)
    if fs == 8000:  # "fillzero": drop the 8 kHz Nyquist bin, zero 4-8 kHz
        spec = np.concatenate([spec[:, :-1], np.zeros((n, n_fft // 2 + 1), np.complex64)], axis=1)
    power = np.abs(spec).astype(np.float32) ** 2
    return np.log(np.clip(power @ mel, 1.0, None)).astype(np.float32)


# ---- equality with transformers ------------------------------------------------------------
def test_transformers_bank_is_transformers(hf):
    np.testing.assert_array_equal(transformers_mel_filters(), hf.mel_filters)


def test_single_clip_matches_transformers(hf, ext_tf):
    x = chirp(16000, 1.3) + 0.01 * np.random.default_rng(3).standard_normal(20800).astype(np.float32)
    ours = ext_tf(x, sampling_rate=16000)
    ref = hf([x], sampling_rate=16000, return_tensors="pt")
    assert set(ours) == set(ref) == {"audio_input_features", "audio_embed_sizes"}  # no mask for N == 1
    assert ours["audio_input_features"].shape == ref["audio_input_features"].shape == (1, 128, 80)
    assert ours["audio_input_features"].dtype == torch.float32
    assert (ours["audio_input_features"] - ref["audio_input_features"]).abs().max() <= 1e-3
    assert ours["audio_embed_sizes"].dtype == torch.long
    assert torch.equal(ours["audio_embed_sizes"], ref["audio_embed_sizes"])


def test_padded_batch_matches_transformers(hf, ext_tf):
    rng = np.random.default_rng(1)
    lengths = (16000, 9137, 4411)
    xs = [(chirp(16000, n / 16000, f0=100 + 300 * i) + 0.05 * rng.standard_normal(n)).astype(np.float32)
          for i, n in enumerate(lengths)]
    ours = ext_tf(xs, sampling_rate=16000)
    ref = hf(xs, sampling_rate=16000, return_tensors="pt")
    assert set(ours) == set(ref)
    mask = ours["audio_attention_mask"]
    assert mask.dtype == torch.bool and torch.equal(mask, ref["audio_attention_mask"])
    assert torch.equal(ours["audio_embed_sizes"], ref["audio_embed_sizes"])
    assert ours["audio_embed_sizes"].tolist() == [13, 7, 4]
    diff = (ours["audio_input_features"] - ref["audio_input_features"]).abs()
    assert diff[mask].max() <= 1e-3
    # Past each clip's end we pad with exact zeros; transformers leaves at most two frames of
    # partial-window log-mel there (its masking stops two frames short).
    assert (ours["audio_input_features"][~mask] == 0).all()
    for i, n in enumerate(lengths):
        valid, overlapping = int(mask[i].sum()), -(-n // 160)  # frames that start before the clip ends
        differing = (diff[i].amax(-1) > 1e-3).nonzero().ravel().tolist()
        assert len(differing) <= 2 and all(valid <= f < overlapping for f in differing)


def test_batch_rows_equal_single_runs(ext):
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (7000, 12345, 400)]
    batch = ext(xs)
    for i, x in enumerate(xs):
        solo = ext(x)["audio_input_features"][0]
        assert torch.allclose(batch["audio_input_features"][i, : len(solo)], solo, atol=1e-4, rtol=0)
        assert (batch["audio_input_features"][i, len(solo):] == 0).all()


def test_mixed_rates_in_one_batch(ext):
    a, b, c = chirp(16000, 0.8), chirp(8000, 1.1, f1=3900), chirp(44100, 0.5)
    batch = ext([a, (b, 8000), (c, 44100)])
    assert batch["audio_attention_mask"].sum(1).tolist() == [78, 108, 48]
    for i, clip in enumerate([a, (b, 8000), (c, 44100)]):
        solo = ext(clip)["audio_input_features"][0]
        assert torch.allclose(batch["audio_input_features"][i, : len(solo)], solo, atol=1e-4, rtol=0)


# ---- the original processor's definition (16 kHz and the 8 kHz fill-zero path) --------------
@pytest.mark.parametrize("fs", [16000, 8000])
def test_matches_original_processor_definition(ext, fs):
    x = chirp(fs, 0.9, f0=60, f1=0.45 * fs) + 0.02 * np.random.default_rng(4).standard_normal(int(0.9 * fs)).astype(
        np.float32)
    ours = ext((x, fs))["audio_input_features"][0].numpy()
    ref = original_reference(x, fs, original_mel_filters())
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=0)


def test_8k_path_shape_and_zero_filled_upper_bins(ext):
    x = chirp(8000, 1.0, f0=60, f1=3900)
    feats = ext((x, 8000))["audio_input_features"][0]
    assert feats.shape == (98, 80)  # (8000 - 200) // 80 + 1: the same 10 ms frame rate as 16 kHz
    assert audio_frame_count(8000, 8000) == audio_frame_count(16000, 16000) == 98
    # bins 128..256 (>= 4 kHz) are zero-filled, so the filters living only there give log(1) = 0 ...
    upper_only = [m for m in range(80) if original_mel_filters()[:128, m].sum() == 0]
    assert upper_only == list(range(62, 80))
    assert (feats[:, 62:] == 0).all()
    # ... while the sweep excites the lower filters
    assert (feats[:, :62].amax(0) > 5).all()


@pytest.mark.parametrize("sr", [22050, 44100, 48000])
def test_other_rates_are_resampled_to_16k(ext, sr):
    def sig(rate):  # band-limited: a sweep 200 Hz..6 kHz plus a 440 Hz tone
        t = np.arange(rate) / rate
        return (chirp(rate, 1.0, 200, 6000, 0.3) + 0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)

    ref = ext(sig(16000))["audio_input_features"][0]
    got = ext((sig(sr), sr))["audio_input_features"][0]
    assert got.shape == ref.shape
    strong = ref > 12  # bands that hold the signal's energy
    assert (got - ref)[strong].abs().max() < 0.1
    assert (got - ref).abs().mean() < 0.01


def test_multichannel_is_mean_of_channels(ext):
    # one clip's channels come inside a list, an (array, rate) tuple or a dict: [C, T] or [T, C]
    rng = np.random.default_rng(5)
    left, right = chirp(16000, 0.5), (0.1 * rng.standard_normal(8000)).astype(np.float32)
    mono = ext((left + right) / 2)["audio_input_features"]
    assert torch.allclose(ext([np.stack([left, right])])["audio_input_features"], mono, atol=1e-5)  # [C, T]
    assert torch.allclose(ext([np.stack([left, right], 1)])["audio_input_features"], mono, atol=1e-5)  # [T, C]
    assert torch.allclose(ext((np.stack([left, right]), 16000))["audio_input_features"], mono, atol=1e-5)
    assert torch.allclose(ext({"array": np.stack([left, right], 1), "sampling_rate": 16000})["audio_input_features"],
                          mono, atol=1e-5)


def test_top_level_2d_array_is_a_batch_of_rows_as_in_transformers(ext):
    # transformers' Phi4MultimodalFeatureExtractor reads a 2-D array [3, 800] as three clips of 800 samples
    from transformers import Phi4MultimodalFeatureExtractor

    clips = np.stack([chirp(16000, 0.25, f0=100 * (k + 1)) for k in range(3)])
    ours = ext(clips)
    one_by_one = ext(list(clips))
    assert ours["audio_input_features"].shape[0] == 3
    assert torch.equal(ours["audio_input_features"], one_by_one["audio_input_features"])
    theirs = Phi4MultimodalFeatureExtractor()(clips, sampling_rate=16000, return_tensors="pt")
    assert theirs["audio_input_features"].shape[0] == 3
    assert ours["audio_embed_sizes"].tolist() == theirs["audio_embed_sizes"].tolist()
    # a 3-D array is [B, T, C]: each clip down-mixed over its last axis (transformers again)
    stereo = np.stack([clips, clips[::-1]], -1)
    assert torch.allclose(ext(stereo)["audio_input_features"], ext(list(stereo.mean(-1)))["audio_input_features"])


def test_input_forms_agree(ext, tmp_path):
    x = chirp(16000, 0.7)
    path = tmp_path / "clip.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    loaded, sr = load_audio(path)
    assert sr == 16000 and loaded.dtype == np.float32 and np.array_equal(loaded, x)
    ref = ext(x)["audio_input_features"]
    for form in (torch.from_numpy(x), (x, 16000), str(path), path, [path], [(x, 16000)]):
        assert torch.equal(ext(form)["audio_input_features"], ref)
    pcm = np.round(x * 32767).astype(np.int16)  # integer PCM is scaled by its full scale
    strong = ref > 10  # quantisation noise only shows in near-silent bands
    assert (ext(pcm)["audio_input_features"] - ref)[strong].abs().max() < 0.05


# ---- the two mel banks -----------------------------------------------------------------------
def test_mel_filter_difference_is_as_documented():
    o, t = original_mel_filters(), transformers_mel_filters()
    assert o.shape == t.shape == (257, 80)
    d = np.abs(o.astype(np.float64) - t)
    assert np.unravel_index(d.argmax(), d.shape) == (246, 79)
    assert d.max() == pytest.approx(0.00972, abs=1e-5)
    d[246, 79] = 0
    assert d.max() < 3e-8
    clip = doc_clip()
    a = AudioFeatureExtractor(AudioConfig(mel_filter="original"))(clip)["audio_input_features"][0]
    b = AudioFeatureExtractor(AudioConfig(mel_filter="transformers"))(clip)["audio_input_features"][0]
    diff = (a - b).abs()
    assert diff.max().item() == pytest.approx(0.0117, abs=5e-4)
    assert (diff[:, :79] == 0).all()
    assert AudioConfig().mel_filter == "original"


# ---- token counts -----------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(n=st.integers(min_value=400, max_value=40000), sr=st.sampled_from([8000, 16000, 22050, 44100]))
def test_token_count_matches_features(n, sr):
    ex = AudioFeatureExtractor(AudioConfig())
    if audio_frame_count(n, sr) == 0:
        return
    out = ex((np.zeros(n, np.float32), sr))
    frames = out["audio_input_features"].shape[1]
    assert frames == audio_frame_count(n, sr)
    assert out["audio_embed_sizes"].item() == audio_token_count(n, sr) == -(-frames // 8)
    hf_size = Phi4MultimodalFeatureExtractor()._compute_audio_embed_size(torch.tensor([frames]))
    assert int(hf_size) == audio_token_count(n, sr)


def test_token_count_examples():
    assert audio_token_count(16000, 16000) == 13  # 98 frames
    assert audio_token_count(16000 * 40, 16000) == 500  # 3998 frames: 40 s = 500 tokens
    assert audio_token_count(399, 16000) == 0


# ---- bad input --------------------------------------------------------------------------------
def _raises(ext, audios, item: str, *reason_words: str, **kw):
    with pytest.raises(AudioError) as e:
        ext(audios, **kw)
    assert e.value.item == item
    msg = str(e.value)
    assert msg.startswith(item)
    for w in reason_words:
        assert w in msg, msg
    return e.value


def test_empty_clip(ext):
    _raises(ext, [np.zeros(8000, np.float32), np.zeros(0, np.float32)], "audio[1]", "empty")


def test_nan_samples(ext):
    x = np.zeros(8000, np.float32)
    x[100] = np.nan
    _raises(ext, [np.zeros(8000, np.float32), np.zeros(8000, np.float32), x], "audio[2]", "non-finite")


def test_too_long():
    ex = AudioFeatureExtractor(AudioConfig(max_audio_seconds=1.0))
    _raises(ex, np.zeros(16001, np.float32), "audio[0]", "too long", "max_audio_seconds")


def test_too_short(ext):
    _raises(ext, np.zeros(399, np.float32), "audio[0]", "too short")


@pytest.mark.parametrize("rate, words", [(4000, ("below", "8000")), (16000.5, ("integer",)), ("16k", ("integer",))])
def test_bad_rate(ext, rate, words):
    _raises(ext, [(np.zeros(8000, np.float32), rate)], "audio[0]", "sampling rate", *words)


def test_wrong_dims(ext):
    _raises(ext, [np.zeros((2, 2, 400), np.float32)], "audio[0]", "shape")
    _raises(ext, [np.zeros((100, 100), np.float32)], "audio[0]", "channel")


def test_missing_file(ext, tmp_path):
    p = tmp_path / "nope.wav"
    _raises(ext, [str(p)], str(p), "not found")


def test_corrupt_file(ext, tmp_path):
    p = tmp_path / "corrupt.wav"
    p.write_bytes(b"RIFF" + np.random.default_rng(0).bytes(400))
    err = _raises(ext, [p], str(p), "cannot decode")
    # libsndfile's own reason, without an empty "Error opening ''" where the path was cut out
    assert "''" not in err.reason and "Error opening" not in err.reason and len(err.reason) > len("cannot decode ()")


def test_truncated_wav(ext, tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, chirp(16000, 1.0), 16000, subtype="PCM_16")
    data = good.read_bytes()
    p = tmp_path / "truncated.wav"
    p.write_bytes(data[: len(data) // 2])
    err = _raises(ext, [good, p], str(p), "truncated")
    assert "32000 bytes" in err.reason  # what the header declares
    head = tmp_path / "header_only.wav"
    head.write_bytes(data[:30])
    _raises(ext, [head], str(head), "cannot decode")
