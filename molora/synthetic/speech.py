"""Speech synthesis with the espeak-ng library shipped by ``espeakng-loader`` (its C API via ctypes).

`speak(text, voice, rate, pitch)` returns float32 samples at 16 kHz. Deterministic: the same
arguments give the same samples.
"""
from __future__ import annotations

import ctypes
import threading

import numpy as np

_LOCK = threading.Lock()
_LIB = None
_RATE = 22050
_CHUNKS: list[np.ndarray] = []

AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_RATE, ESPEAK_PITCH = 1, 3
CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@CALLBACK
def _on_samples(wav, n, _events):
    if n > 0 and wav:
        _CHUNKS.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
    return 0


def _lib():
    global _LIB, _RATE
    if _LIB is None:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if rate <= 0:
            raise RuntimeError("espeak-ng failed to initialise")
        _RATE = rate
        lib.espeak_SetSynthCallback.argtypes = [CALLBACK]
        lib.espeak_SetSynthCallback(_on_samples)
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        _LIB = lib
    return _LIB


def speak(text: str, voice: str = "en", rate: int = 175, pitch: int = 50, sampling_rate: int = 16000) -> np.ndarray:
    """Synthesise ``text``; returns mono float32 in [-1, 1] at ``sampling_rate``."""
    with _LOCK:
        lib = _lib()
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        lib.espeak_SetParameter(ESPEAK_RATE, int(rate), 0)
        lib.espeak_SetParameter(ESPEAK_PITCH, int(pitch), 0)
        _CHUNKS.clear()
        data = text.encode("utf-8") + b"\0"
        lib.espeak_Synth(data, len(data), 0, 0, 0, 0, None, None)
        lib.espeak_Synchronize()
        pcm = np.concatenate(_CHUNKS) if _CHUNKS else np.zeros(0, np.int16)
        _CHUNKS.clear()
        native = _RATE
    audio = pcm.astype(np.float32) / 32768.0
    if sampling_rate != native and audio.size:
        import torch
        import torchaudio.functional as AF

        audio = AF.resample(torch.from_numpy(audio), native, sampling_rate).numpy()
    return audio
