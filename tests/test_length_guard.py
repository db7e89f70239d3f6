"""The per-row token limit (`data.max_tokens`, default the model's context): over-long rows are
skipped and listed like bad media before any tensor is built; the count equals the processor's;
a huge manifest line is never read whole; the other manifest guards (duplicate keys, empty files,
the outside-root hint in CLI syntax, PIL's bomb warning)."""
from __future__ import annotations

import json
import tracemalloc
import warnings

import pytest

from datafactory import corpus, write_manifest
from molora import MoLoRAProcessor
from molora.errors import LengthError, MoLoRAError
from molora.stages.collate import Collator
from molora.stages.length_guard import RowLength
from molora.data.manifest import ManifestError, read_manifest


@pytest.fixture(scope="module")
def proc():
    return MoLoRAProcessor.from_pretrained("tiny")


@pytest.mark.parametrize("kind", ["mixed", "preference", "asr", "vqa", "joint"])
def test_count_equals_the_processors_token_count(proc, tmp_path, kind):
    col = Collator(proc)
    length = RowLength(proc)
    for s in read_manifest(corpus(tmp_path, kind, n=4)):
        loaded = col.load_media(s)
        if s.kind == "preference":
            built = max(proc([loaded.messages + [{"role": "assistant", "content": r}]], return_labels=True)
                        ["input_ids"].shape[1] for r in (s.chosen, s.rejected))
        else:
            built = proc([loaded.messages], return_labels=True)["input_ids"].shape[1]
        assert length.count(loaded) == built


def test_over_long_rows_are_skipped_listed_and_strict_stops(proc, tmp_path):
    data = corpus(tmp_path, "asr", n=4)
    rows = [json.loads(l) for l in data.read_text().splitlines()]
    rows.append({"messages": [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}]})
    m = write_manifest(tmp_path / "long.jsonl", rows)
    samples = read_manifest(m)
    col = Collator(proc, max_tokens=200)
    batch = col(samples)
    assert batch["input_ids"].shape[0] == 4 and batch["input_ids"].shape[1] <= 200
    (skip,) = col.skipped
    assert skip["source"] == f"{m.resolve()}:5" and skip["item"] == "row"
    assert "tokens exceed data.max_tokens=200" in skip["reason"]
    with pytest.raises(LengthError, match=r"long.jsonl:5 \(row\): \d+ tokens exceed data.max_tokens=200"):
        Collator(proc, max_tokens=200, strict=True)(samples)
    # the default limit is the model's context
    assert Collator(proc).length.max_tokens == proc.config.backbone.max_position_embeddings


def test_a_row_over_the_models_context_is_not_tokenised(proc, tmp_path, monkeypatch):
    """20,002 tokens' worth of text against a 16,384 context: refused from its character count."""
    context = proc.config.backbone.max_position_embeddings
    text = "x" * (RowLength(proc).longest * (context + 10))
    m = write_manifest(tmp_path / "huge.jsonl", [{"messages": [{"role": "user", "content": text},
                                                              {"role": "assistant", "content": "y"}]}])
    calls = []
    real = proc.tokenizer.__class__.__call__
    monkeypatch.setattr(proc.tokenizer.__class__, "__call__", lambda self, t, **k: calls.append(len(t)) or
                        real(self, t, **k))
    col = Collator(proc)
    assert col(read_manifest(m)) is None
    assert "not tokenised" in col.skipped[0]["reason"] and f"data.max_tokens (the model's context)={context:,}" \
        in col.skipped[0]["reason"]
    assert not any(n > 100 for n in calls)  # nothing long reached the tokenizer


def test_training_skips_and_lists_an_over_long_row(tmp_path):
    from molora.stages.recipe import load_recipe
    from molora.stages.trainer import train

    data = corpus(tmp_path / "data", "mixed", n=4)
    rows = [json.loads(l) for l in data.read_text().splitlines()]
    rows.append({"messages": [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "ok"}]})
    m = write_manifest(tmp_path / "data" / "long.jsonl", rows)
    summary = train(load_recipe("tiny-sft", {"data.train": str(m), "data.max_tokens": 300, "max_steps": 2,
                                             "training.micro_batch_size": 5}), tmp_path / "out", progress=False)
    assert [s["source"].rsplit(":", 1)[1] for s in summary["skipped"]] == ["5"]
    assert "exceed data.max_tokens=300" in summary["skipped"][0]["reason"]


def test_a_huge_manifest_line_is_never_read_whole(tmp_path):
    rows = [json.dumps({"audio": "a.wav", "text": "fine"})] * 2
    huge = json.dumps({"audio": "b.wav", "text": "x" * (8 << 20)})
    m = tmp_path / "m.jsonl"
    m.write_text(rows[0] + "\n" + huge + "\n" + rows[1] + "\n")
    skipped: list = []
    tracemalloc.start()
    samples = read_manifest(m, max_line_bytes=1 << 20, skipped=skipped)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(samples) == 2 and peak < 3 << 20  # bounded by the limit (readline's buffers), not the 8 MiB line
    assert skipped == [{"source": f"{m.resolve()}:2", "item": "line",
                        "reason": f"line of {len(huge) + 1:,} bytes is over the limit of 1,048,576 bytes "
                                  "(molora.data.manifest.MAX_LINE_BYTES)"}]
    with pytest.raises(ManifestError, match=r"m.jsonl:2: line of [\d,]+ bytes is over the limit"):
        read_manifest(m, max_line_bytes=1 << 20)


def test_duplicate_json_keys_are_refused_with_file_and_line(tmp_path):
    m = tmp_path / "d.jsonl"
    m.write_text('{"audio": "a.wav", "text": "one"}\n{"audio": "a.wav", "text": "one", "text": "two"}\n')
    with pytest.raises(ManifestError, match=rf"{m.resolve()}:2: key 'text' is given twice in one object"):
        read_manifest(m)
    m.write_text('{"messages": [{"role": "user", "role": "assistant", "content": "x"}]}\n')
    with pytest.raises(ManifestError, match=r"d.jsonl:1: key 'role' is given twice"):
        read_manifest(m)


def test_empty_or_missing_manifest_paths_are_named(tmp_path):
    with pytest.raises(ManifestError, match="empty manifest path"):
        read_manifest("")
    with pytest.raises(ManifestError, match=rf"{tmp_path.resolve()}: is a directory, not a manifest file"):
        read_manifest(tmp_path)


def test_outside_root_hint_gives_the_recipe_key(tmp_path):
    """Training's hint names the recipe key (`data.allow_outside_root=true`), not Python syntax."""
    from molora.stages.trainer import load_samples

    (tmp_path / "data").mkdir()
    m = write_manifest(tmp_path / "data" / "m.jsonl", [{"audio": "../o.wav", "text": "x"}])
    with pytest.raises(ManifestError, match=r"outside the data root .* \(set data\.allow_outside_root=true to "
                                            r"permit this\)"):
        load_samples({"train": str(m)}, "train")


def test_no_pil_bomb_warning_beside_moloras_own_skip(proc, tmp_path):
    """An image over PIL's MAX_IMAGE_PIXELS (but under its error limit) is refused by molora's own
    limit; reading the manifest (which probes image headers) and collating print no PIL warning."""
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("1", (10_000, 9_500)).save(big)  # 95 M pixels: PIL warns above 89.5 M
    m = write_manifest(tmp_path / "m.jsonl", [{"image": "big.png", "question": "q", "answers": ["a"]}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        col = Collator(proc)
        assert col(read_manifest(m)) is None
    assert "exceeds the limit" in col.skipped[0]["reason"]


def test_empty_audio_file_and_empty_path_name_the_item(tmp_path):
    from molora.encoders.audio_features import load_audio
    from molora.encoders.image_transform import load_image

    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(MoLoRAError) as e:
        load_audio(empty)
    assert str(e.value) == f"{empty}: empty file (0 bytes)"
    with pytest.raises(MoLoRAError, match=r"^audio: empty path$"):
        load_audio("")
    with pytest.raises(MoLoRAError, match=r"^image: empty path$"):
        load_image("")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(MoLoRAError) as e:
        load_audio(bad)
    assert "''" not in str(e.value) and str(e.value).startswith(f"{bad}: cannot decode audio file")
