"""Everyday-English ASR: WER of a model on hand-written everyday sentences that no training corpus holds,
spoken by the espeak-ng program, plus its tokenizer's tokens per word on the same text.

    .venv/bin/python benchmarks/bench_everyday_asr.py [--model tiny] [--tokenizer PATH ...] [--out DIR]

The sentences: ``benchmarks/data/everyday_heldout.txt`` (``tests/test_everyday.py`` checks that the
everyday generator produces none of them, nor any 6-word window of them). Sentence i is spoken by
``espeak-ng -v VOICE -s RATE -w FILE`` with VOICE ``en`` (even i) / ``en-us`` (odd i) and RATE 140..170 words per
minute (140 + 7i mod 31), kept as the program writes it (22.05 kHz, 16-bit mono WAV). Then
``molora eval asr --model MODEL --manifest OUT/manifest.jsonl --output-dir OUT/eval`` scores it (the Open ASR
normaliser, corpus WER, RTFx). Tokens per word: the model's tokenizer (and each ``--tokenizer``) on the
sentences as written, over whitespace-separated words. Writes ``OUT/results.json``; not run by CI.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT = ROOT / "benchmarks" / "data" / "everyday_heldout.txt"
VOICES = ("en", "en-us")
RATES = (140, 170)


def sentences(path: Path = HELD_OUT) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def style(i: int) -> tuple[str, int]:
    """The voice and rate (words per minute) sentence ``i`` is spoken with."""
    return VOICES[i % len(VOICES)], RATES[0] + (7 * i) % (RATES[1] - RATES[0] + 1)


def speak_all(texts: list[str], out: Path, espeak: str) -> Path:
    """WAV files as the espeak-ng program writes them, and an ASR manifest of them."""
    import soundfile as sf

    (out / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, text in enumerate(texts):
        voice, rate = style(i)
        wav = out / "audio" / f"{i:04d}.wav"
        subprocess.run([espeak, "-v", voice, "-s", str(rate), "-w", str(wav), text], check=True,
                       capture_output=True)
        info = sf.info(str(wav))
        rows.append({"id": f"everyday-{i:04d}", "audio": f"audio/{wav.name}", "text": text,
                     "duration": round(info.frames / info.samplerate, 4), "voice": voice, "rate": rate,
                     "sampling_rate": info.samplerate})
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def tokens_per_word(tokenizer, texts: list[str]) -> float:
    words = sum(len(t.split()) for t in texts)
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts) / words


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="what `molora eval asr --model` takes (default: the tiny preset)")
    ap.add_argument("--tokenizer", action="append", default=[], help="also measure this tokenizer.json (repeatable)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "everyday"))
    ap.add_argument("--sentences", default=str(HELD_OUT))
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args(argv)

    from molora import MoLoRAProcessor
    from molora.tokenizer import load_tiny_tokenizer

    texts = sentences(Path(args.sentences))
    tpw = {f"model:{args.model}": round(tokens_per_word(MoLoRAProcessor.from_pretrained(args.model).tokenizer,
                                                        texts), 3)}
    for path in args.tokenizer:
        tok = load_tiny_tokenizer(Path(path))
        tpw[f"{path} ({len(tok)} tokens)"] = round(tokens_per_word(tok, texts), 3)
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        print("bench_everyday_asr: the espeak-ng program is not installed (Debian / Ubuntu: apt-get install "
              "espeak-ng); the benchmark speaks the held-out sentences with it", file=sys.stderr)
        print(json.dumps({"tokens_per_word": tpw}, indent=1))
        return 2
    out = Path(args.out)
    manifest = speak_all(texts, out, espeak)
    version = subprocess.run([espeak, "--version"], capture_output=True, text=True).stdout.strip()
    cmd = [sys.executable, "-m", "molora.cli", "eval", "asr", "--model", args.model, "--manifest", str(manifest),
           "--output-dir", str(out / "eval"), "--overwrite", "--batch-size", str(args.batch_size)]
    subprocess.run(cmd, check=True)
    summary = json.loads((out / "eval" / "summary.json").read_text())
    results = {"model": args.model, "sentences": len(texts), "words": sum(len(t.split()) for t in texts),
               "espeak_ng": version, "voices": list(VOICES), "rates_wpm": list(RATES),
               "wer": summary["average_wer"], "rtfx": summary["composite_rtfx"], "tokens_per_word": tpw,
               "command": " ".join(cmd[1:])}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
