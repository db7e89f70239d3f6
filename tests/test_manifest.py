"""Training manifests (JSONL -> Sample) and the Hugging Face dataset reader, on tiny local data."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import drawn_image, synth_audio
from molora.errors import MoLoRAError
from molora.data.manifest import ManifestError, Sample, read_manifest
from molora.modalities.audio import AUDIO_TOKENS_UNKNOWN
from molora.modalities.image import IMAGE_TOKENS_UNKNOWN
from molora.prompts import ASR_PROMPT, VQA_SUFFIX


def write_manifest(root: Path, rows: list, name: str = "train.jsonl") -> Path:
    p = root / name
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return p


@pytest.fixture()
def data_root(tmp_path):
    (tmp_path / "audio").mkdir()
    (tmp_path / "img").mkdir()
    sf.write(tmp_path / "audio" / "a.wav", synth_audio(0.8), 16000)
    drawn_image(60, 40).save(tmp_path / "img" / "x.png")
    return tmp_path


def test_each_row_kind_parses(data_root):
    root = data_root.resolve()
    m = write_manifest(data_root, [
        {"audio": "audio/a.wav", "text": "hello world"},
        "",
        {"audio": "audio/a.wav", "text": "bonjour", "prompt": "Transcribe in French."},
        {"messages": [{"role": "system", "content": "be brief"},
                      {"role": "user", "content": [{"type": "image", "image": "img/x.png"},
                                                   {"type": "text", "text": "what?"}]},
                      {"role": "assistant", "content": "a box"}]},
        {"image": "img/x.png", "question": "How many?", "answers": ["3", "three"]},
        {"messages": [{"role": "user", "content": "pick"}], "chosen": "good", "rejected": "bad"},
    ])
    s = read_manifest(m)
    assert [x.kind for x in s] == ["asr", "asr", "chat", "vqa", "preference"]
    assert all(isinstance(x, Sample) for x in s)
    assert s[0].source == f"{m.resolve()}:1" and s[1].source == f"{m.resolve()}:3"
    wav = str(root / "audio" / "a.wav")
    assert s[0].messages == [
        {"role": "user", "content": [{"type": "audio", "audio": wav}, {"type": "text", "text": ASR_PROMPT}]},
        {"role": "assistant", "content": "hello world"}]
    assert s[1].messages[0]["content"][1]["text"] == "Transcribe in French."
    assert s[2].messages[1]["content"][0] == {"type": "image", "image": str(root / "img" / "x.png")}
    assert s[2].messages[2] == {"role": "assistant", "content": "a box"}
    assert s[3].messages == [
        {"role": "user", "content": [{"type": "image", "image": str(root / "img" / "x.png")},
                                     {"type": "text", "text": "How many?" + VQA_SUFFIX}]},
        {"role": "assistant", "content": "3"}]
    assert s[3].answers == ["3", "three"]
    assert s[4].messages == [{"role": "user", "content": "pick"}]
    assert (s[4].chosen, s[4].rejected) == ("good", "bad")
    # lengths: text + media estimates; the 0.8 s clip is ~10 audio tokens (header probe, no decode)
    # (4 per message + its text; 0.8 s of audio = ceil(0.8 * 12.5) = 10 tokens; the 60x40 image is
    # one 448 crop: 273 global + 272 crop tokens; a preference row counts its longer answer)
    assert s[0].length == 4 + 10 + len(ASR_PROMPT) + 4 + len("hello world")
    assert s[1].length == 4 + 10 + len("Transcribe in French.") + 4 + len("bonjour")
    assert s[2].length == 4 + len("be brief") + 4 + 545 + len("what?") + 4 + len("a box")
    assert s[3].length == 4 + 545 + len("How many?" + VQA_SUFFIX) + 4 + len("3")
    assert s[4].length == 4 + len("pick") + len("good")


@pytest.mark.parametrize("line, reason", [
    ('{"audio": "a.wav", "text": ', "invalid JSON"),
    ({"foo": 1}, "unknown row shape"),
    ({"audio": "a.wav"}, "missing field 'text'"),
    ({"audio": "a.wav", "text": "  "}, "'text' is empty"),
    ({"audio": "a.wav", "text": 5}, "must be a string"),
    ({"image": "x.png", "question": "q", "answers": "yes"}, "'answers' must be a non-empty list"),
    ({"image": "x.png", "answers": ["a"]}, "missing field 'question'"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "role must be one of"),
    ({"messages": [{"role": "user", "content": "x"}]}, "no non-empty assistant turn"),
    ({"messages": [{"role": "user", "content": [{"type": "video", "video": "v.mp4"}]},
                   {"role": "assistant", "content": "x"}]}, "type must be"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "chosen": "x", "rejected": "y"}, "must end with a user turn"),
    ({"messages": [{"role": "user", "content": "q"}], "chosen": "x"}, "missing field 'rejected'"),
    ([1, 2], "must be a JSON object"),
])
def test_malformed_lines_name_file_and_line(tmp_path, line, reason):
    m = write_manifest(tmp_path, [{"audio": "ok.wav", "text": "fine"}, line])
    with pytest.raises(ManifestError) as e:
        read_manifest(m)
    assert isinstance(e.value, MoLoRAError)
    assert f"{m.resolve()}:2" in str(e.value)
    assert reason in str(e.value)


def test_missing_files_are_not_checked_here(tmp_path):
    m = write_manifest(tmp_path, [{"audio": "nope.wav", "text": "x"}, {"image": "nope.png", "question": "q",
                                                                       "answers": ["a"]}])
    s = read_manifest(m)
    assert s[0].messages[0]["content"][0]["audio"] == str(tmp_path.resolve() / "nope.wav")
    # constant estimates when the header cannot be read (~10 s of audio, a few HD crops)
    assert s[0].length == 4 + AUDIO_TOKENS_UNKNOWN + len(ASR_PROMPT) + 4 + len("x")
    assert s[1].length == 4 + IMAGE_TOKENS_UNKNOWN + len("q" + VQA_SUFFIX) + 4 + len("a")


def test_paths_outside_root_are_refused_unless_allowed(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    sf.write(outside / "o.wav", synth_audio(0.3), 16000)
    (root / "link.wav").symlink_to(outside / "o.wav")
    cases = [
        {"audio": "../elsewhere/o.wav", "text": "x"},
        {"audio": str(outside / "o.wav"), "text": "x"},
        {"audio": "link.wav", "text": "x"},
        {"image": "sub/../../elsewhere/i.png", "question": "q", "answers": ["a"]},
        {"messages": [{"role": "user", "content": [{"type": "audio", "audio": "../elsewhere/o.wav"}]},
                      {"role": "assistant", "content": "x"}]},
    ]
    for row in cases:
        m = write_manifest(root, [row])
        with pytest.raises(ManifestError, match="outside the data root") as e:
            read_manifest(m)
        assert f"{m.resolve()}:1" in str(e.value)
        (s,) = read_manifest(m, allow_outside_root=True)
        media = s.messages[0]["content"][0]
        assert Path(media.get("audio") or media.get("image")).is_absolute()
    # an absolute path under the root and a '..' that stays inside are fine
    m = write_manifest(root, [{"audio": str(root / "a.wav"), "text": "x"}, {"audio": "sub/../a.wav", "text": "y"}])
    s = read_manifest(m)
    assert [x.messages[0]["content"][0]["audio"] for x in s] == [str(root.resolve() / "a.wav")] * 2


# ----------------------------------------------------------------------------------------
# Hugging Face datasets, local only
# ----------------------------------------------------------------------------------------
def _wav_bytes(x: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV")
    return buf.getvalue()


def test_hf_reader_asr_save_to_disk_and_parquet(tmp_path):
    from datasets import Audio, Dataset

    from molora.data.hf_datasets import read_hf_dataset

    clips = [synth_audio(0.5, seed=0), synth_audio(0.7, seed=1)]
    # an Audio feature holding encoded WAV bytes (how hub parquet shards store audio)
    ds = Dataset.from_dict({"audio": [{"bytes": _wav_bytes(c, 16000), "path": None} for c in clips],
                            "sentence": ["one", "two"]}).cast_column("audio", Audio())
    ds.save_to_disk(str(tmp_path / "asr"))
    ds.to_parquet(str(tmp_path / "asr.parquet"))
    for src in (tmp_path / "asr", tmp_path / "asr.parquet"):
        samples = list(read_hf_dataset(src, split="train", kind="asr"))
        assert [s.kind for s in samples] == ["asr", "asr"]
        assert samples[1].source == f"{src}[train] row 2"
        arr, sr = samples[0].messages[0]["content"][0]["audio"]
        assert sr == 16000 and arr.dtype == np.float32
        np.testing.assert_allclose(arr, clips[0], atol=1e-4)  # 16-bit WAV round trip
        assert samples[0].messages[0]["content"][1]["text"] == ASR_PROMPT
        assert [s.messages[1]["content"] for s in samples] == ["one", "two"]
    assert len(list(read_hf_dataset(tmp_path / "asr", split="train", limit=1))) == 1

    # raw arrays + a sampling-rate column; transcript under "transcription"
    raw = Dataset.from_dict({"audio": [c.tolist() for c in clips], "sampling_rate": [16000, 8000],
                             "transcription": ["a", "b"]})
    raw.save_to_disk(str(tmp_path / "raw"))
    samples = list(read_hf_dataset(tmp_path / "raw", split="train"))
    assert samples[1].messages[0]["content"][0]["audio"][1] == 8000
    assert [s.messages[1]["content"] for s in samples] == ["a", "b"]


def test_hf_reader_vqa_layouts(tmp_path):
    from datasets import Dataset, DatasetDict, Features, Image, Sequence, Value

    from molora.data.hf_datasets import read_hf_dataset

    imgs = [drawn_image(50, 30, seed=1), drawn_image(30, 50, seed=2)]
    docvqa = Dataset.from_dict({"image": imgs, "question": ["q1", "q2"], "answers": [["a", "b"], ["c"]]},
                               features=Features(image=Image(), question=Value("string"),
                                                 answers=Sequence(Value("string"))))
    DatasetDict({"validation": docvqa}).save_to_disk(str(tmp_path / "docvqa"))
    s = list(read_hf_dataset(tmp_path / "docvqa", split="validation", kind="vqa"))
    assert [x.answers for x in s] == [["a", "b"], ["c"]]
    img = s[0].messages[0]["content"][0]["image"]
    assert img.size == (50, 30) and img.mode == "RGB"
    assert s[0].messages[0]["content"][1]["text"] == "q1" + VQA_SUFFIX
    assert s[0].messages[1]["content"] == "a"
    with pytest.raises(MoLoRAError, match="split 'test' not found"):
        list(read_hf_dataset(tmp_path / "docvqa", split="test", kind="vqa"))

    # ChartQA-like: "query" + a single string "label"
    chart = Dataset.from_dict({"image": imgs, "query": ["how many?", "max?"], "label": ["4", "12.5"]},
                              features=Features(image=Image(), query=Value("string"), label=Value("string")))
    chart.to_parquet(str(tmp_path / "chart.parquet"))
    s = list(read_hf_dataset(tmp_path / "chart.parquet", split="test", kind="vqa"))
    assert [x.answers for x in s] == [["4"], ["12.5"]]
    assert s[1].messages[0]["content"][1]["text"].startswith("max?")


def test_hf_reader_offline_error_names_dataset(monkeypatch):
    import datasets

    from molora.data.hf_datasets import read_hf_dataset

    def unreachable(*a, **k):
        raise ConnectionError("Couldn't reach 'someone/speech' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(MoLoRAError) as e:
        next(read_hf_dataset("someone/speech", split="train"))
    msg = str(e.value)
    assert "someone/speech" in msg and "local path" in msg and "download" in msg
    assert not os.path.exists("someone/speech")


# ----------------------------------------------------------------------------------------
# issue 23: paths that break path resolution, NeMo manifests, relative paths in data files
# ----------------------------------------------------------------------------------------
def test_nul_in_a_media_path_names_file_and_line(tmp_path):
    m = write_manifest(tmp_path, [{"audio": "a.wav", "text": "ok"}, {"audio": "a\u0000.wav", "text": "x"}])
    with pytest.raises(ManifestError) as e:
        read_manifest(m)
    assert f"{m.resolve()}:2" in str(e.value) and "NUL" in str(e.value)
    img = write_manifest(tmp_path, [{"image": "x\u0000.png", "question": "q", "answers": ["a"]}], "img.jsonl")
    with pytest.raises(ManifestError, match=r"img.jsonl:1: image .* NUL"):
        read_manifest(img)


def test_a_symlink_loop_is_a_per_row_skip(tmp_path):
    from molora.errors import AudioError

    sf.write(tmp_path / "a.wav", synth_audio(0.3), 16000)
    (tmp_path / "loop1.wav").symlink_to(tmp_path / "loop2.wav")
    (tmp_path / "loop2.wav").symlink_to(tmp_path / "loop1.wav")
    m = write_manifest(tmp_path, [{"audio": "a.wav", "text": "one"}, {"audio": "loop1.wav", "text": "two"},
                                  {"audio": "a.wav", "text": "three"}])
    skipped: list = []
    samples = read_manifest(m, skipped=skipped)
    assert [s.messages[1]["content"] for s in samples] == ["one", "three"]
    assert skipped == [{"source": f"{m.resolve()}:2", "item": str(tmp_path.resolve() / "loop1.wav"),
                        "reason": "audio: symlink loop: the path never names a file"}]
    # without a skip list: the bad medium's own error, naming file, line and path
    with pytest.raises(AudioError, match=rf"{m.resolve()}:2 \(.*loop1.wav\): audio: symlink loop"):
        read_manifest(m)


def test_training_counts_a_symlink_loop_row_as_a_skip(tmp_path):
    from datafactory import corpus
    from molora.stages.recipe import load_recipe
    from molora.stages.trainer import train

    data = corpus(tmp_path / "data", "asr", n=4)
    (data.parent / "loop1.wav").symlink_to(data.parent / "loop2.wav")
    (data.parent / "loop2.wav").symlink_to(data.parent / "loop1.wav")
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    m = write_manifest(data.parent, rows[:2] + [{"audio": "loop1.wav", "text": "red"}] + rows[2:], "loop.jsonl")
    summary = train(load_recipe("tiny-speech", {"data.train": str(m), "max_steps": 1,
                                                "training.micro_batch_size": 4}), tmp_path / "out", progress=False)
    assert [(s["source"], s["reason"]) for s in summary["skipped"]] == [
        (f"{m.resolve()}:3", "audio: symlink loop: the path never names a file")]


def test_nemo_manifest_rows_are_asr_rows(tmp_path):
    sf.write(tmp_path / "a.wav", synth_audio(0.8), 16000)
    # as NeMo writes them: one object per line, audio_filepath relative to the manifest, duration, text
    m = tmp_path / "nemo.jsonl"
    m.write_text('{"audio_filepath": "a.wav", "duration": 0.8, "text": "hello world"}\n'
                 '{"audio_filepath": "a.wav", "duration": 0.8, "text": "again", "offset": 0.0}\n')
    s = read_manifest(m)
    assert [x.kind for x in s] == ["asr", "asr"]
    assert s[0].messages[0]["content"][0]["audio"] == str(tmp_path.resolve() / "a.wav")
    assert s[0].messages[1]["content"] == "hello world"
    assert s[0].length == 4 + 10 + len(ASR_PROMPT) + 4 + len("hello world")      # the duration column
    for row, reason in (({"audio_filepath": "a.wav", "text": "x", "offset": 1.5}, "'offset' is 1.5"),
                        ({"audio_filepath": "a.wav", "audio": "a.wav", "text": "x"}, "both 'audio' and"),
                        ({"audio_filepath": "../a.wav", "text": "x"}, "outside the data root")):
        bad = write_manifest(tmp_path, [row], "bad.jsonl")
        with pytest.raises(ManifestError, match=rf"bad.jsonl:1: .*{reason}"):
            read_manifest(bad)


@pytest.mark.parametrize("ext", ["csv", "jsonl", "parquet"])
def test_hf_reader_resolves_relative_media_against_the_data_file(tmp_path, monkeypatch, ext):
    from datasets import Dataset

    from molora.data.hf_datasets import read_hf_dataset

    (tmp_path / "data").mkdir()
    (tmp_path / "elsewhere").mkdir()
    sf.write(tmp_path / "data" / "a.wav", synth_audio(0.5), 16000)
    ds = Dataset.from_dict({"audio": ["a.wav"], "text": ["hello"]})
    path = tmp_path / "data" / f"train.{ext}"
    {"csv": ds.to_csv, "jsonl": ds.to_json, "parquet": ds.to_parquet}[ext](str(path))
    monkeypatch.chdir(tmp_path / "elsewhere")          # the working folder holds no a.wav
    (s,) = read_hf_dataset(path, split="train", streaming=False)
    audio = s.messages[0]["content"][0]["audio"]
    assert isinstance(audio, tuple) and audio[1] == 16000      # decoded: found beside the data file


def test_hf_reader_reads_an_imagefolder(tmp_path):
    """ImageFolder: images + metadata.jsonl naming them in ``file_name`` (training's datasets spec)."""
    from molora.data.hf_datasets import read_hf_dataset

    drawn_image(50, 30, seed=1).save(tmp_path / "a.png")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "question": "q", "answers": ["x"]})
                                            + "\n")
    (s,) = read_hf_dataset(tmp_path, split="train", kind="vqa")
    assert s.messages[0]["content"][0]["image"].size == (50, 30) and s.answers == ["x"]
