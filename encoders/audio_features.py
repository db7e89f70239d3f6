"""Log-mel front end of the Phi-4-multimodal speech encoder.

What one clip goes through (``AudioFeatureExtractor.__call__``):

1. **Input.** One clip is a 1-D array/tensor (mono samples at ``sampling_rate``), an
   ``(array, sampling_rate)`` tuple, a ``{"array", "sampling_rate"}`` dict (what ``datasets``
   yields for a decoded ``Audio`` column; a ``{"path"}`` / ``{"bytes"}`` dict of an undecoded one
   is read too), a torchcodec ``AudioDecoder``, or a path (read with soundfile, librosa as
   fallback, see :func:`load_audio`; URLs are refused: molora works offline). Integer PCM arrays
   are scaled to [-1, 1) by their full scale (int16 / 32768, ...), as soundfile does.
   **2-D arrays, the rule** (``as_clip_list``): a top-level 2-D array/tensor is a *batch*,
   one clip per row (``[3, 800]`` is three clips of 800 samples), as transformers'
   ``Phi4MultimodalFeatureExtractor`` reads it; a top-level 3-D one is ``[B, T, C]``, each clip
   down-mixed over its last axis (transformers again). Multichannel audio for *one* clip comes
   inside a tuple, a dict or a list: its 2-D array is ``[C, T]`` or ``[T, C]`` with C <= 8 (the
   shorter axis), down-mixed by the mean over channels.
2. **Checks** (``AudioError`` naming ``audio[i]`` or the path): wrong number of dimensions,
   empty, NaN/inf samples, sampling rate not an integer or below 8000, longer than
   ``config.max_audio_seconds``, shorter than one 25 ms frame.
3. **Rate.** 16 kHz is used as is. 8 kHz takes the original processor's "fillzero" path:
   n_fft 256 / Hamming 200 / hop 80 (the same 10 ms frame rate), bins 0..127 of the 8 kHz
   spectrum (31.25 Hz apart, like the 16 kHz bins) kept and bins 128..256 (4-8 kHz, the 8 kHz
   Nyquist bin included) set to zero, then the same 16 kHz mel bank. Every other rate >= 8000
   (11025, 22050, 44100, 48000, ...) is resampled to 16 kHz with
   ``torchaudio.functional.resample`` (windowed sinc, rolloff 0.99, i.e. cut at 7.92 kHz,
   above the 7.69 kHz top of the mel bank). The original processor decimated by the integer
   ``fs // 16000`` instead (22.05 kHz not resampled at all, 44.1 kHz to 22.05 kHz); we do not
   copy that, and transformers' extractor refuses anything but 16 kHz.
4. **Log-mel** (whole batch at once in torch): frames of 400 samples every 160 (no centring,
   the tail that does not fill a frame is dropped: ``frames = (n - 400) // 160 + 1``);
   pre-emphasis 0.97 inside each frame (the first sample is differenced with itself);
   x32768; symmetric Hamming window; ``rfft(n=512)`` in float32 (the reference computes it in
   float64; see ``docs/audio-front-end.md``); power ``|S|**2``; 80 mel filters 0..7690 Hz; ``clamp(min=1)``; natural log.
   No dither, no normalisation (the model holds global mean / inverse std buffers).
   How it runs: only real frames are transformed (all clips' frames stacked, no padding to the
   longest clip); pre-emphasis is applied once per sample of each waveform and the
   frame-start samples fixed afterwards (frames overlap 2.5x); one ``rfft`` for the stack; the
   power spectrum's re^2 / im^2 go straight into one matmul with a row-duplicated mel bank;
   the finite-samples check is one sum (the element-wise check runs only when that fails).
5. **Batch.** Features are padded with 0.0 (= log 1) to the longest clip. ``audio_embed_sizes``
   = ceil(ceil(frames / time_reduction) / downsample_rate) (transformers'
   ``_compute_audio_embed_size``: 12.5 tokens per second). ``audio_attention_mask`` (bool
   ``[N, T_max]``, frame < frames) is returned only when N > 1, exactly like transformers
   and the original processor (for one clip the key is absent).

Mel filter banks (``AudioConfig.mel_filter``):

* ``"original"`` (default): the bank the checkpoint was trained with, built like the
  original ``processing_phi4mm.py`` (``speechlib_mel``): triangles in Kaldi-mel space
  (1127 ln(1 + f/700)), centres evenly spaced between mel(0) and mel(7690), weight
  ``1 - |centre - mel(bin)| / spacing`` strictly inside (left, right), only FFT bins
  ``round(fmin)+1 .. round(fmax)-1`` (1..245 at 16 kHz / 512), float32.
* ``"transformers"``: transformers' ``mel_filter_bank(..., triangularize_in_mel_space=True,
  mel_scale="kaldi")``: the same triangles evaluated on all bins 0..256 in float64 (cast to
  float32 when applied).

The two banks differ in one weight (FFT bin 246 of the top filter, ``docs/audio-front-end.md``):
``"original"`` is the default because the checkpoint was trained with it; ``"transformers"``
reproduces transformers' ``Phi4MultimodalFeatureExtractor`` (valid frames within 1e-3).

One deliberate difference from transformers' extractor in padded batches: frames past a
clip's end are exactly 0.0 here (as in the original processor, which padded per-clip
features), while transformers zeroes only part of them and leaves up to two frames after the
end of each shorter clip holding log-mel of partial windows. Valid frames are identical.
"""
from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..config import AudioConfig
from ..errors import AudioError, ConfigError

# Analysis parameters per supported input rate: (win_length, hop_length, n_fft).
_STFT = {16000: (400, 160, 512), 8000: (200, 80, 256)}
MODEL_RATE = 16000
MIN_RATE = 8000
PREEMPHASIS = 0.97
MEL_FMIN, MEL_FMAX = 0.0, 7690.0
_MAX_CHANNELS = 8
_FRAMES_PER_BLOCK = 16384  # STFT rows transformed at once (bounds the FFT memory on long inputs)


# ----------------------------------------------------------------------------------------
# mel filter banks
# ----------------------------------------------------------------------------------------
def _kaldi_mel(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def original_mel_filters(sampling_rate: int = 16000, n_fft: int = 512, n_mels: int = 80,
                         fmin: float = MEL_FMIN, fmax: float = MEL_FMAX) -> np.ndarray:
    """The original Phi-4-multimodal ("SpeechLib FbankFC") mel bank, ``[n_fft // 2 + 1, n_mels]`` float32.

    Triangles in Kaldi-mel space with centres evenly spaced on [mel(fmin), mel(fmax)]; a bin
    gets ``1 - |centre - mel(bin)| / spacing`` when strictly between the neighbouring centres;
    only bins ``int(fmin * n_fft / sr + .5) + 1`` up to (excluding) ``int(fmax * n_fft / sr + .5)``
    are filled.
    """
    if not 0 <= fmin < fmax <= sampling_rate / 2:
        raise ConfigError("mel range must satisfy 0 <= fmin < fmax <= sampling_rate / 2", "audio.mel_filter")
    n_bins = n_fft // 2 + 1
    to_bin = lambda f: int(f * n_fft / sampling_rate + 0.5)  # noqa: E731
    lo, hi = to_bin(fmin) + 1, max(to_bin(fmax), to_bin(fmin) + 1)
    mel_lo, mel_hi = _kaldi_mel(fmin), _kaldi_mel(fmax)
    centres = np.linspace(mel_lo, mel_hi, n_mels + 2)
    spacing = (mel_hi - mel_lo) / (n_mels + 1)
    bins = np.arange(lo, hi)
    mel_bins = 1127.0 * np.log(1.0 + bins * sampling_rate / (n_fft * 700.0))  # [K]
    left, centre, right = centres[None, :-2], centres[None, 1:-1], centres[None, 2:]
    m = mel_bins[:, None]
    inside = (m > left) & (m < right)
    weights = np.where(inside, 1.0 - np.abs(centre - m) / spacing, 0.0)
    out = np.zeros((n_bins, n_mels), dtype=np.float32)
    out[lo:hi] = weights
    return out


def transformers_mel_filters(sampling_rate: int = 16000, n_fft: int = 512, n_mels: int = 80,
                             fmin: float = MEL_FMIN, fmax: float = MEL_FMAX) -> np.ndarray:
    """The bank transformers' ``Phi4MultimodalFeatureExtractor`` uses, ``[n_fft // 2 + 1, n_mels]`` float64.

    Kaldi mel scale, triangles in mel space, evaluated on every FFT bin:
    ``max(0, min((mel(bin) - left) / (centre - left), (right - mel(bin)) / (right - centre)))``.
    """
    n_bins = n_fft // 2 + 1
    centres = np.linspace(_kaldi_mel(fmin), _kaldi_mel(fmax), n_mels + 2)
    m = _kaldi_mel(sampling_rate / (2 * (n_bins - 1)) * np.arange(n_bins))[:, None]
    diff = np.diff(centres)
    rising = (m - centres[None, :-2]) / diff[None, :-1]
    falling = (centres[None, 2:] - m) / diff[None, 1:]
    return np.maximum(0.0, np.minimum(rising, falling))


def mel_filters(kind: str, n_mels: int = 80) -> np.ndarray:
    """The 16 kHz / n_fft 512 bank named by ``AudioConfig.mel_filter``."""
    if kind == "original":
        return original_mel_filters(MODEL_RATE, 512, n_mels)
    if kind == "transformers":
        return transformers_mel_filters(MODEL_RATE, 512, n_mels)
    raise ConfigError(f"unknown mel_filter {kind!r} (expected 'original' or 'transformers')", "audio.mel_filter")


# ----------------------------------------------------------------------------------------
# lengths
# ----------------------------------------------------------------------------------------
def _check_rate(sampling_rate: Any, item: str) -> int:
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, float, np.integer, np.floating)):
        raise AudioError(f"sampling rate must be an integer number of Hz, got {sampling_rate!r}", item)
    if not math.isfinite(float(sampling_rate)) or float(sampling_rate) != int(sampling_rate):
        raise AudioError(f"sampling rate must be an integer number of Hz, got {sampling_rate!r}", item)
    sr = int(sampling_rate)
    if sr < MIN_RATE:
        raise AudioError(f"sampling rate {sr} Hz is below the supported minimum of {MIN_RATE} Hz", item)
    return sr


def _resampled_length(num_samples: int, orig: int, new: int) -> int:
    """Output length of ``torchaudio.functional.resample`` (same arithmetic, same rounding)."""
    g = math.gcd(orig, new)
    o, n = orig // g, new // g
    return int(torch.ceil(torch.as_tensor(n * num_samples / o)).item())


def audio_frame_count(num_samples: int, sampling_rate: int = MODEL_RATE) -> int:
    """Number of 10 ms log-mel frames the extractor produces for a clip (0 if none fits).

    16 kHz: ``(n - 400) // 160 + 1``; 8 kHz: ``(n - 200) // 80 + 1``; other rates: the same
    as 16 kHz on the length after resampling to 16 kHz.
    """
    sr = _check_rate(sampling_rate, "audio")
    n = int(num_samples)
    if sr not in _STFT:
        n, sr = _resampled_length(n, sr, MODEL_RATE), MODEL_RATE
    win, hop, _ = _STFT[sr]
    return max(0, (n - win) // hop + 1)


def _ceil_div(a, b):
    return -(-a // b)


def audio_token_count(num_samples: int, sampling_rate: int = MODEL_RATE, time_reduction: int = 8,
                      downsample_rate: int = 1) -> int:
    """Audio placeholder tokens for a clip: ``ceil(ceil(frames / time_reduction) / downsample_rate)``.

    Equal to ``audio_embed_sizes`` from :class:`AudioFeatureExtractor` for the same clip and
    to transformers' ``_compute_audio_embed_size`` (12.5 tokens per second at 16 kHz).
    """
    frames = audio_frame_count(num_samples, sampling_rate)
    return _ceil_div(_ceil_div(frames, time_reduction), downsample_rate)


# ----------------------------------------------------------------------------------------
# reading files
# ----------------------------------------------------------------------------------------
def _check_wav_complete(path: Path, item: str) -> None:
    """libsndfile silently reads a WAV whose data chunk is cut short; catch that from the header."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return
        endian = "<" if head[:4] == b"RIFF" else ">"
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = f.read(4), struct.unpack(endian + "I", f.read(4))[0]
            if chunk_id == b"data":
                available = size - pos - 8
                if chunk_size not in (0, 0xFFFFFFFF) and chunk_size > available:
                    raise AudioError(
                        f"truncated WAV file: header declares {chunk_size} bytes of audio data, "
                        f"only {available} are present", item)
                return
            pos += 8 + chunk_size + (chunk_size & 1)


def load_audio(path: str | os.PathLike, mono: bool = True) -> tuple[np.ndarray, int]:
    """Read an audio file -> ``(samples float32, sampling_rate)``.

    soundfile first (WAV/FLAC/OGG/MP3 with a recent libsndfile), librosa (audioread) as a
    fallback. ``mono=True`` down-mixes by the mean over channels (1-D result); otherwise
    multichannel files come back as ``[T, C]``. Missing, unreadable, corrupt or truncated
    files raise ``AudioError`` naming the path.
    """
    item = str(path)
    if not item.strip():
        raise AudioError("empty path", "audio")
    p = Path(path)
    if not p.exists():
        raise AudioError("file not found", item)
    if not p.is_file():
        raise AudioError("is a directory, not an audio file" if p.is_dir() else "not a regular file", item)
    if p.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)", item)
    try:
        import soundfile as sf

        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as first:  # noqa: BLE001 - anything soundfile cannot decode
        try:
            import warnings

            import librosa

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data, sr = librosa.load(str(p), sr=None, mono=False)
            data = np.asarray(data, dtype=np.float32)
            data = data[:, None] if data.ndim == 1 else data.T
        except Exception:  # noqa: BLE001
            # libsndfile says "Error opening '<path>': <reason>"; the error names the file already
            reason = str(first)
            for name in (repr(str(path)), repr(str(p)), str(path), str(p)):
                reason = reason.replace(f"Error opening {name}:", "").replace(name, "the file")
            reason = reason.strip(" :")
            raise AudioError(f"cannot decode audio file ({reason or type(first).__name__})", item) from None
    _check_wav_complete(p, item)
    if data.shape[0] == 0:
        raise AudioError("audio file holds no samples", item)
    data = data.mean(axis=1, dtype=np.float32) if mono else data
    return np.ascontiguousarray(data, dtype=np.float32), int(sr)


# ----------------------------------------------------------------------------------------
# the extractor
# ----------------------------------------------------------------------------------------
_SAMPLES = (np.ndarray, torch.Tensor)


def _is_clip_tuple(x: Any) -> bool:
    """``(samples, sampling_rate)``: a pair whose second member is not itself audio."""
    return (isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], _SAMPLES + (list,))
            and not isinstance(x[1], _SAMPLES + (list, tuple, os.PathLike)))


def _is_clip_dict(x: Any) -> bool:
    return isinstance(x, dict) and any(k in x for k in ("array", "path", "bytes"))


def is_single_clip(x: Any) -> bool:
    """One clip (module docstring, "Input"), as opposed to a batch of clips."""
    if isinstance(x, _SAMPLES):
        return x.ndim <= 1
    return isinstance(x, (str, os.PathLike)) or _is_clip_tuple(x) or _is_clip_dict(x) or \
        hasattr(x, "get_all_samples")


def as_clip_list(audios: Any) -> list:
    """A batch of clips as a list, by the rule of the module docstring: a 2-D array/tensor is one clip
    per row, a 3-D one ``[B, T, C]`` is down-mixed over its last axis, a list/tuple of clips is as given,
    one clip is a batch of one."""
    if isinstance(audios, _SAMPLES) and audios.ndim == 2:
        return list(audios)
    if isinstance(audios, _SAMPLES) and audios.ndim == 3:
        return [clip.mean(-1) if isinstance(clip, torch.Tensor) else clip.mean(axis=-1) for clip in audios]
    if is_single_clip(audios):
        return [audios]
    return list(audios)


def _from_dict(value: dict, sampling_rate, item: str) -> tuple[Any, Any]:
    """``(samples, rate)`` of a ``datasets`` audio dict: decoded (``array`` + ``sampling_rate``), or a
    ``path`` / encoded ``bytes`` to read."""
    if value.get("array") is not None:
        rate = value.get("sampling_rate", sampling_rate)
        return value["array"], rate
    if value.get("bytes") is not None:
        import io

        import soundfile as sf

        try:
            data, rate = sf.read(io.BytesIO(value["bytes"]), dtype="float32", always_2d=True)
        except Exception as e:  # noqa: BLE001 - any format libsndfile cannot decode
            raise AudioError(f"cannot decode the audio bytes ({e})", item) from None
        return data.mean(axis=1, dtype=np.float32), rate
    if value.get("path"):
        from molora.encoders.image_transform import refuse_url

        refuse_url(str(value["path"]), str(value["path"]), AudioError)
        return load_audio(value["path"], mono=True)
    raise AudioError("an audio dict needs 'array' and 'sampling_rate' (or 'path' / 'bytes')", item)


def _to_float_tensor(x: Any, item: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
    else:
        try:
            arr = np.asarray(x)
        except Exception:  # noqa: BLE001
            raise AudioError(f"cannot interpret {type(x).__name__} as audio samples", item) from None
        if arr.dtype.kind in "iu":
            info = np.iinfo(arr.dtype)
            if arr.dtype.kind == "u":  # offset binary (8-bit WAV)
                arr = (arr.astype(np.float64) - (info.max + 1) / 2) / ((info.max + 1) / 2)
            else:
                arr = arr.astype(np.float64) / (info.max + 1.0)
        elif arr.dtype.kind not in "f":
            raise AudioError(f"samples must be numbers, got dtype {arr.dtype}", item)
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex() or t.dtype == torch.bool:
        raise AudioError(f"samples must be real numbers, got dtype {t.dtype}", item)
    if not t.is_floating_point():
        t = t.double() / float(torch.iinfo(t.dtype).max + 1)
    return t.to(torch.float32)


class AudioFeatureExtractor:
    """Phi-4-multimodal log-mel features for a batch of clips (see the module docstring).

    ``AudioFeatureExtractor(config)(audios, sampling_rate=16000)`` -> a ``transformers.BatchFeature``
    ``{"audio_input_features": [N, T_max, 80] float32, "audio_embed_sizes": [N] int64,
    "audio_attention_mask": [N, T_max] bool (only when N > 1)}``.

    Read as transformers' ``SequenceFeatureExtractor`` is: ``model_input_names``, ``feature_size``,
    ``sampling_rate``, ``padding_value``, ``padding_side``, ``return_attention_mask``, and ``pad()``.
    """

    model_input_names = ["audio_input_features", "audio_embed_sizes", "audio_attention_mask"]
    padding_value = 0.0  # log(1): what padded frames hold
    padding_side = "right"
    return_attention_mask = True

    def __init__(self, config: AudioConfig | None = None, *, mel_filter: str | None = None):
        self.config = config = config if config is not None else AudioConfig()
        if config.sampling_rate != MODEL_RATE:
            raise ConfigError(f"the log-mel front end is defined at {MODEL_RATE} Hz", "audio.sampling_rate")
        self.mel_filter = mel_filter or config.mel_filter
        self.num_mel_bins = self.feature_size = config.num_mel_bins
        self.sampling_rate = config.sampling_rate
        self.time_reduction = config.time_reduction
        self.downsample_rate = config.downsample_rate
        self.max_audio_seconds = config.max_audio_seconds
        self.mel_filters = torch.from_numpy(np.asarray(mel_filters(self.mel_filter, self.num_mel_bins), np.float32))

    # -- one clip: checks, down-mix, rate --------------------------------------------------
    def prepare(self, audio: Any, sampling_rate: int = MODEL_RATE, item: str = "audio[0]") -> tuple[torch.Tensor, int]:
        """Validate one clip -> (1-D float32 CPU tensor, rate in {8000, 16000})."""
        if isinstance(audio, (str, os.PathLike)):
            from molora.encoders.image_transform import refuse_url

            item = str(audio)
            refuse_url(item, item, AudioError)
            audio, sampling_rate = load_audio(audio, mono=True)
        elif isinstance(audio, dict):
            audio, sampling_rate = _from_dict(audio, sampling_rate, item)
        elif hasattr(audio, "get_all_samples"):   # torchcodec AudioDecoder (datasets >= 4)
            try:
                decoded = audio.get_all_samples()
            except Exception as e:  # noqa: BLE001
                raise AudioError(f"cannot decode audio ({e})", item) from None
            audio, sampling_rate = decoded.data, decoded.sample_rate
        elif isinstance(audio, tuple):
            if len(audio) != 2:
                raise AudioError(f"a tuple must be (samples, sampling_rate), got {len(audio)} items", item)
            audio, sampling_rate = audio
        sr = _check_rate(sampling_rate, item)
        wav = _to_float_tensor(audio, item)
        if wav.ndim == 2:
            c0, c1 = wav.shape
            if c0 <= _MAX_CHANNELS and c0 <= c1:
                wav = wav.mean(dim=0)
            elif c1 <= _MAX_CHANNELS:
                wav = wav.mean(dim=1)
            else:
                raise AudioError(f"2-D audio {tuple(wav.shape)} has no channel axis of size <= {_MAX_CHANNELS}", item)
        elif wav.ndim != 1:
            raise AudioError(f"audio must be 1-D (mono) or 2-D (channels), got shape {tuple(wav.shape)}", item)
        n = wav.shape[0]
        if n == 0:
            raise AudioError("empty audio (0 samples)", item)
        if not bool(torch.isfinite(wav.sum())) and not bool(torch.isfinite(wav).all()):  # sum: one cheap pass
            bad = int((~torch.isfinite(wav)).sum())
            raise AudioError(f"audio contains {bad} non-finite sample(s) (NaN or inf)", item)
        seconds = n / sr
        if seconds > self.max_audio_seconds:
            raise AudioError(f"audio is too long: {seconds:.1f} s > max_audio_seconds={self.max_audio_seconds:g}", item)
        if sr not in _STFT:
            wav = self._resample(wav, sr)
            sr = MODEL_RATE
        win = _STFT[sr][0]
        if wav.shape[0] < win:
            raise AudioError(f"audio is too short: {n} samples at {sr} Hz, need at least one 25 ms frame "
                             f"({win} samples)", item)
        return wav, sr

    @staticmethod
    def _resample(wav: torch.Tensor, sr: int) -> torch.Tensor:
        import torchaudio.functional as AF

        return AF.resample(wav, sr, MODEL_RATE)

    # -- batch ------------------------------------------------------------------------------
    def __call__(self, audios: Any, sampling_rate: int | None = MODEL_RATE, *, return_attention_mask: bool = True,
                 device: str | torch.device | None = None, **_: Any) -> dict[str, torch.Tensor]:
        """Featurise one clip or a batch (arrays/tensors, ``(array, sr)`` tuples, ``datasets`` dicts, paths).

        ``sampling_rate`` (None = 16000) applies to bare arrays; tuples, dicts and files carry their own.
        A top-level 1-D array is one clip, a 2-D one a batch of rows (``as_clip_list``, as transformers).
        """
        sampling_rate = MODEL_RATE if sampling_rate is None else sampling_rate
        items: Sequence[Any] = as_clip_list(audios)
        if len(items) == 0:
            raise AudioError("no audio clips given", "audio")
        clips = [self.prepare(a, sampling_rate, f"audio[{i}]") for i, a in enumerate(items)]
        dev = torch.device(device) if device is not None else torch.device("cpu")
        frames = torch.tensor([(w.shape[0] - _STFT[sr][0]) // _STFT[sr][1] + 1 for w, sr in clips])
        f_max = int(frames.max())
        feats = torch.zeros(len(clips) * f_max, self.num_mel_bins, dtype=torch.float32, device=dev)
        for sr in _STFT:  # one batched pass per native rate (16 kHz, 8 kHz)
            idx = [i for i, (_, r) in enumerate(clips) if r == sr]
            if idx:
                mel = self.log_mel_frames([clips[i][0] for i in idx], sr, dev)  # [sum of frames, n_mels]
                # row j of clip i goes to feats[i, j]: one index_copy for the whole group
                n = frames[idx]
                first = torch.tensor(idx) * f_max - (torch.cumsum(n, 0) - n)
                dest = torch.arange(int(n.sum())) + torch.repeat_interleave(first, n)
                feats.index_copy_(0, dest.to(dev), mel)
        feats = feats.view(len(clips), f_max, self.num_mel_bins)
        sizes = _ceil_div(_ceil_div(frames, self.time_reduction), self.downsample_rate).long()
        out = {"audio_input_features": feats, "audio_embed_sizes": sizes.to(dev)}
        if return_attention_mask and len(clips) > 1:
            out["audio_attention_mask"] = (torch.arange(f_max)[None, :] < frames[:, None]).to(dev)
        from transformers import BatchFeature

        return BatchFeature(out)

    def pad(self, processed_features, padding=True, max_length: int | None = None, truncation: bool = False,
            pad_to_multiple_of: int | None = None, return_attention_mask: bool | None = None,
            return_tensors: str | None = None):
        """Pad per-clip ``audio_input_features`` (``[T_i, feature_size]`` each: a list of dicts, or a dict
        of lists, e.g. a collate function's samples) to one batch, as transformers'
        ``SequenceFeatureExtractor.pad`` does, with the same signature and result (it runs transformers'
        own implementation with this extractor's settings): frames padded with ``padding_value`` on
        ``padding_side``, an int32 frame ``attention_mask`` unless ``return_attention_mask=False``,
        other keys batched as given."""
        return self._padder().pad(processed_features, padding=padding, max_length=max_length,
                                  truncation=truncation, pad_to_multiple_of=pad_to_multiple_of,
                                  return_attention_mask=return_attention_mask, return_tensors=return_tensors)

    def _padder(self):
        from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor

        class _Padder(SequenceFeatureExtractor):
            model_input_names = self.model_input_names

        return _Padder(feature_size=self.feature_size, sampling_rate=self.sampling_rate,
                       padding_value=self.padding_value, padding_side=self.padding_side,
                       return_attention_mask=self.return_attention_mask)

    def log_mel(self, waves: list[torch.Tensor], sampling_rate: int = MODEL_RATE,
                device: str | torch.device | None = None) -> torch.Tensor:
        """Log-mel of same-rate 1-D clips -> ``[B, F_max, n_mels]``, 0.0 past each clip's last frame."""
        win, hop, _ = _STFT[sampling_rate]
        n = [(w.shape[0] - win) // hop + 1 for w in waves]
        mel = self.log_mel_frames(waves, sampling_rate, device)
        return torch.nn.utils.rnn.pad_sequence(list(mel.split(n)), batch_first=True)

    def _analysis(self, sampling_rate: int, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(window with the 32768 scale folded in, mel bank laid out for interleaved re/im power), cached."""
        key = (sampling_rate, str(dev))
        hit = self._cache.get(key) if hasattr(self, "_cache") else None
        if hit is None:
            win, _, n_fft = _STFT[sampling_rate]
            window = torch.hamming_window(win, periodic=False, dtype=torch.float64).mul(32768).float()
            filters = self.mel_filters
            if sampling_rate != MODEL_RATE:  # 8 kHz: bins above 4 kHz (and its Nyquist bin) stay zero
                filters = filters[: n_fft // 2]
            # |X|^2 @ F == [re^2, im^2 interleaved] @ [F repeated per row]: no separate re^2+im^2 pass
            filters = filters.repeat_interleave(2, dim=0)
            hit = (window.to(dev), filters.contiguous().to(dev))
            self.__dict__.setdefault("_cache", {})[key] = hit
        return hit

    def log_mel_frames(self, waves: list[torch.Tensor], sampling_rate: int = MODEL_RATE,
                       device: str | torch.device | None = None) -> torch.Tensor:
        """Log-mel of every valid frame of same-rate 1-D clips, clip after clip -> ``[sum F_i, n_mels]``.

        Only real frames are transformed (no padding to the longest clip). Pre-emphasis runs once
        per sample on each waveform (frames overlap 2.5x), its frame-start sample fixed afterwards.
        """
        win, hop, n_fft = _STFT[sampling_rate]
        dev = torch.device(device) if device is not None else waves[0].device
        window, filters = self._analysis(sampling_rate, dev)
        n_bins = filters.shape[0] // 2
        n = [(w.shape[0] - win) // hop + 1 for w in waves]
        total = sum(n)
        framed = torch.empty(total, win, dtype=torch.float32, device=dev)
        start = 0
        for w, f in zip(waves, n):  # one pass per clip: pre-emphasis, framing and window in two ops
            w = w[: (f - 1) * hop + win].to(dev, torch.float32)
            emph = torch.empty_like(w)
            torch.sub(w[1:], w[:-1], alpha=PREEMPHASIS, out=emph[1:])
            frames = emph.unfold(0, win, hop)  # [f, win] view
            torch.mul(frames, window, out=framed[start: start + f])
            # the first sample of each frame is its own predecessor: x0 * (1 - 0.97)
            framed[start: start + f, 0] = w[:: hop][:f] * (1 - PREEMPHASIS) * window[0]
            start += f
        out = torch.empty(total, filters.shape[1], dtype=torch.float32, device=dev)
        for s in range(0, total, _FRAMES_PER_BLOCK):  # blocks bound the FFT memory on long inputs
            spec = torch.view_as_real(torch.fft.rfft(framed[s: s + _FRAMES_PER_BLOCK], n=n_fft, dim=-1))
            power = spec[:, :n_bins].square_().flatten(1)  # [f, 2 * n_bins]: re^2, im^2 interleaved
            torch.matmul(power, filters, out=out[s: s + _FRAMES_PER_BLOCK])
        return out.clamp_(min=1.0).log_()

    def embed_size(self, num_frames: int) -> int:
        return _ceil_div(_ceil_div(int(num_frames), self.time_reduction), self.downsample_rate)


__all__ = [
    "AudioFeatureExtractor",
    "as_clip_list",
    "is_single_clip",
    "audio_frame_count",
    "audio_token_count",
    "load_audio",
    "mel_filters",
    "original_mel_filters",
    "transformers_mel_filters",
]
