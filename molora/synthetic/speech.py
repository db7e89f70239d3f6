"""Speech synthesis with the espeak-ng library shipped by ``espeakng-loader`` (its C API via ctypes).

`speak(text, voice, rate, pitch)` returns float32 samples at 16 kHz. Deterministic: the same
arguments give the same samples, in one process and across processes.

Why each utterance gets a freshly loaded library: espeak-ng keeps synthesis state in C statics
that nothing resets between utterances (``Flutter_ix``, the pitch-flutter position in
``wavegen.c``; the automatic gain ``agc``; the cycle counter for roughness; ...). The same
call therefore comes out a few samples longer or shorter depending on what was spoken before
(``espeak_Terminate`` + ``espeak_Initialize`` do not reset them either). So every call loads a
private copy of the shared library (``~/.cache/molora/espeak/<build>/``, so that nothing else
in the process holds it open), initialises it, speaks, terminates and unloads it (``dlclose``):
a fresh copy of all statics each time, ~2 ms of overhead. The breath noise of
some voice variants (e.g. ``+f3``) comes from libc ``rand()``, which is seeded just before
synthesis (and espeak's own generator too, via ``espeak_ng_SetRandSeed``).
"""
from __future__ import annotations

import atexit
import ctypes
import hashlib
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

__all__ = ["speak", "list_voices", "native_sample_rate", "espeak_version", "ENGLISH_VOICES"]

_LOCK = threading.Lock()
_CHUNKS: list[np.ndarray] = []
_PRIVATE: dict = {"dir": None, "path": None, "n": 0}
_NATIVE_RATE: int | None = None

AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_RATE, ESPEAK_PITCH = 1, 3
RAND_SEED = 0
CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

# English voices in the shipped data (espeak_ListVoices, language "en*"); en-shaw (Shavian script) left out.
ENGLISH_VOICES = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc",
                  "en-gb-x-gbclan", "en-gb-x-gbcwmd")


class _Voice(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_char_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


@CALLBACK
def _on_samples(wav, n, _events):
    if n > 0 and wav:
        _CHUNKS.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
    return 0


def _data_path() -> bytes:
    import espeakng_loader

    return str(espeakng_loader.get_data_path()).encode()


def _copy_dir() -> Path:
    """Per-user folder for private copies of the library (one per library build, reused by every
    process; a process-private temporary folder when the cache is not writable)."""
    import espeakng_loader

    src = Path(espeakng_loader.get_library_path())
    st = src.stat()
    key = hashlib.sha1(f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "molora" / "espeak" / key
    try:
        cache.mkdir(parents=True, exist_ok=True)
        probe = cache / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return cache
    except OSError:
        d = Path(tempfile.mkdtemp(prefix="molora-espeak-"))
        atexit.register(shutil.rmtree, d, ignore_errors=True)
        return d


def _private_copy(fresh_name: bool = False) -> str:
    """A copy of libespeak-ng that nothing else in this process has open, so dlclose really unloads it."""
    import espeakng_loader

    if _PRIVATE["dir"] is None:
        _PRIVATE.update(dir=_copy_dir(), path=None, n=0)
    if _PRIVATE["path"] is None or fresh_name:
        _PRIVATE["n"] += 1
        src = Path(espeakng_loader.get_library_path())
        dst = Path(_PRIVATE["dir"]) / f"copy{_PRIVATE['n']}-{src.name}"
        if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
            tmp = dst.with_name(f"{dst.name}.{os.getpid()}.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)  # atomic: concurrent processes never see half a library
        _PRIVATE["path"] = str(dst)
    return _PRIVATE["path"]


def _unload(lib: ctypes.CDLL) -> None:
    import _ctypes

    handle = lib._handle
    close = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary")
    close(handle)
    if hasattr(os, "RTLD_NOLOAD"):  # still mapped (someone holds it)? use a new file next time
        try:
            again = ctypes.CDLL(_PRIVATE["path"], mode=os.RTLD_NOLOAD)
        except OSError:
            return  # unloaded: the next dlopen starts from pristine statics
        close(again._handle)
        _private_copy(fresh_name=True)


def _open() -> ctypes.CDLL:
    """Load a fresh instance of the library and initialise it (synchronous output, callback set)."""
    global _NATIVE_RATE
    lib = ctypes.CDLL(_private_copy())
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, _data_path(), 0)
    if rate <= 0:
        _unload(lib)
        raise RuntimeError("espeak-ng failed to initialise (data path: %s)" % _data_path().decode())
    _NATIVE_RATE = rate
    lib.espeak_SetSynthCallback.argtypes = [CALLBACK]
    lib.espeak_SetSynthCallback(_on_samples)
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_Info.restype = ctypes.c_char_p
    lib.espeak_Info.argtypes = [ctypes.c_void_p]
    lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
    lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
    return lib


def _close(lib: ctypes.CDLL) -> None:
    lib.espeak_Terminate()
    _unload(lib)


def _libc():
    if sys.platform == "win32":
        return ctypes.cdll.msvcrt
    return ctypes.CDLL(None)


def _synthesise(text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
    lib = _open()
    try:
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r} (see molora.synthetic.speech.list_voices())")
        lib.espeak_SetParameter(ESPEAK_RATE, int(rate), 0)
        lib.espeak_SetParameter(ESPEAK_PITCH, int(pitch), 0)
        _libc().srand(RAND_SEED)
        if hasattr(lib, "espeak_ng_SetRandSeed"):
            lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
            lib.espeak_ng_SetRandSeed(RAND_SEED)
        _CHUNKS.clear()
        data = text.encode("utf-8") + b"\0"
        err = lib.espeak_Synth(data, len(data), 0, 0, 0, 0, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with status {err} for {text!r}")
        lib.espeak_Synchronize()
        pcm = np.concatenate(_CHUNKS) if _CHUNKS else np.zeros(0, np.int16)
        _CHUNKS.clear()
        return pcm
    finally:
        _close(lib)


def native_sample_rate() -> int:
    """espeak-ng's own output rate (22050 Hz for the shipped data)."""
    if _NATIVE_RATE is None:
        with _LOCK:
            _close(_open())
    return int(_NATIVE_RATE)


def espeak_version() -> str:
    with _LOCK:
        lib = _open()
        try:
            return lib.espeak_Info(None).decode()
        finally:
            _close(lib)


def list_voices(language_prefix: str = "en") -> list[dict]:
    """Voices in the shipped data whose language starts with ``language_prefix`` ("" for all):
    ``[{"name", "language", "identifier", "gender"}]``. Any ``language`` value (e.g. ``"en-us"``)
    works as ``speak(voice=...)``, optionally with a variant suffix such as ``"+m3"`` or ``"+f4"``."""
    with _LOCK:
        lib = _open()
        try:
            arr = lib.espeak_ListVoices(None)
            out, i = [], 0
            while arr[i]:
                v = arr[i].contents
                lang = (v.languages or b"\x00")[1:].decode()  # first byte is the priority
                if lang.startswith(language_prefix):
                    out.append({"name": v.name.decode(), "language": lang,
                                "identifier": v.identifier.decode(), "gender": int(v.gender)})
                i += 1
            return out
        finally:
            _close(lib)


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Deterministic band-limited resampling (soxr HQ, the backend librosa uses)."""
    if orig_sr == target_sr or audio.size == 0:
        return audio.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(audio.astype(np.float32, copy=False), orig_sr, target_sr, quality="HQ").astype(np.float32)


def speak(text: str, voice: str = "en", rate: int = 175, pitch: int = 50, sampling_rate: int = 16000) -> np.ndarray:
    """Synthesise ``text``; returns mono float32 in [-1, 1] at ``sampling_rate``.

    ``voice`` is an espeak-ng voice name (``"en"``, ``"en-us"``, ``"en-gb-x-rp"``, ...; a variant
    may be appended: ``"en-us+f4"``), ``rate`` words per minute (80..450), ``pitch`` 0..99.
    The same arguments always give the same samples."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("speak() needs non-empty text")
    with _LOCK:
        pcm = _synthesise(text, voice, rate, pitch)
        native = int(_NATIVE_RATE)
    audio = pcm.astype(np.float32) / 32768.0
    return np.clip(resample(audio, native, sampling_rate), -1.0, 1.0)  # resampling can overshoot by ~1%
