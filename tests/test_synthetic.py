"""Synthetic corpora: espeak determinism, seeded generators, answers right by construction,
disjoint splits, manifests the trainer reads, cache reuse."""
from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from molora.data.manifest import read_manifest
from molora.synthetic import charts, documents, preferences, sentences
from molora.synthetic.build import CORPORA, build_corpora
from molora.synthetic.common import parallel_map, write_wav
from molora.synthetic.speech import list_voices, speak

SEED = 0


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _tree(directory: Path) -> dict[str, str]:
    """relative path -> sha256 of every file except corpus.json (which records build time)."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != "corpus.json"}


def _overlaps(labels) -> list:
    boxes = [lab.box for lab in labels]
    return [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:]
            if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    return root, build_corpora(root, SEED, "tiny")


# ----------------------------------------------------------------------------------------
# espeak-ng determinism
# ----------------------------------------------------------------------------------------
_ARGS = ("the red cat sees two blue cups", "en-us", 160, 45)
_BREATHY = ("seven green boxes", "en+f3", 150, 60)  # f3 adds breath noise from libc rand()


def test_speak_is_deterministic_in_process():
    first = speak(*_ARGS)
    breathy = speak(*_BREATHY)
    for _ in range(3):
        speak("four nine zero one", "en-gb-x-rp", 200, 30)  # state left behind by other utterances
        import ctypes

        ctypes.CDLL(None).rand()  # someone else draws from libc's generator
        again = speak(*_ARGS)
        assert again.shape == first.shape and _digest(again) == _digest(first)
        assert _digest(speak(*_BREATHY)) == _digest(breathy)
    assert first.dtype == np.float32 and 1.0 < len(first) / 16000 < 4.0 and np.abs(first).max() > 0.05
    assert _digest(speak(_ARGS[0], "en-us", 161, 45)) != _digest(first)


def test_speak_is_deterministic_across_processes():
    code = ("import hashlib, numpy as np; from molora.synthetic.speech import speak; "
            f"a = speak(*{_ARGS!r}); b = speak(*{_BREATHY!r}); "
            "print(hashlib.sha256(a.tobytes()).hexdigest(), hashlib.sha256(b.tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    assert out == [_digest(speak(*_ARGS)), _digest(speak(*_BREATHY))]


def test_english_voices_listed_and_unknown_voice_is_clear():
    langs = {v["language"] for v in list_voices("en")}
    assert {"en-gb", "en-us", "en-gb-x-rp", "en-gb-scotland"} <= langs
    with pytest.raises(ValueError, match="no voice"):
        speak("hello", voice="xx-nope")


# ----------------------------------------------------------------------------------------
# sentences
# ----------------------------------------------------------------------------------------
def test_sentences_closed_vocabulary_and_disjoint_splits():
    assert 100 <= len(sentences.VOCABULARY) <= 200
    splits = sentences.split_sentences({"train": 400, "dev": 40, "test": 40}, SEED)
    vocab = set(sentences.VOCABULARY)
    for split, sents in splits.items():
        assert len(sents) == len(set(sents))
        for s in sents:
            assert 3 <= len(s.split()) <= 8 and set(s.split()) <= vocab, s
            assert sentences.sentence_split(s, SEED) == split
    assert not set(splits["train"]) & set(splits["test"])
    assert not set(splits["train"]) & set(splits["dev"])
    assert not set(splits["dev"]) & set(splits["test"])
    # any sizes, same seed: a held-out sentence is never in another corpus's train split
    other = sentences.split_sentences({"train": 900, "test": 5}, SEED)
    assert not set(other["train"]) & set(splits["test"])
    assert sentences.split_sentences({"train": 400, "dev": 40, "test": 40}, SEED) == splits
    assert sentences.split_sentences({"train": 400, "dev": 40, "test": 40}, SEED + 1)["train"] != splits["train"]


# ----------------------------------------------------------------------------------------
# answers right by construction
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", documents.KINDS)
def test_document_answers_are_fields_on_the_page(kind):
    for i in range(6):
        page = documents.draw_document(random.Random(i), kind)
        w, h = page.image.size
        assert 224 <= w <= 448 and h <= 448
        assert not _overlaps(page.labels)
        fields = page.fields
        on_page = {lab.key: lab for lab in page.labels if lab.key}
        for qa in page.qas:
            assert qa.answers and all(a.strip() for a in qa.answers)
            if qa.key.startswith("row:"):  # "which row has V in column C": that row's cell C holds V
                _, col, value = qa.key.split(":")
                assert fields[f"cell:{qa.answers[0]}:{col}"] == value
                continue
            assert qa.answers[0] == fields[qa.key] or ("$" + qa.answers[0]) == fields[qa.key]
            assert page.canvas.crop_matches(on_page[qa.key])  # the exact string is legible on the page
            if fields[qa.key].startswith("$"):
                assert set(qa.answers) == {fields[qa.key], fields[qa.key][1:]}
        if kind == "receipt":
            prices = [float(v[1:]) for k, v in fields.items() if k.startswith("price:")]
            assert float(fields["total"][1:]) == pytest.approx(sum(prices))


@pytest.mark.parametrize("chart_type", charts.CHART_TYPES)
def test_chart_answers_match_labelled_values(chart_type):
    for i in range(6):
        for source in charts.SOURCES:
            chart = charts.draw_chart(random.Random(i), chart_type, source)
            assert chart.image.size == (charts.WIDTH, charts.HEIGHT)
            assert not _overlaps(chart.labels)
            values = chart.data
            recorded = {lab.text for lab in chart.labels if lab.role == "value"}
            if chart_type == "pie":
                assert sum(values.values()) == 100
            for qa in chart.qas:
                assert qa.source == source
                kind, *args = qa.key.split(":")
                if kind == "value":
                    label = chart.value_label(args[0])
                    assert label.text in recorded and chart.canvas.crop_matches(label)
                    assert label.text == (qa.answers[0] + "%" if chart_type == "pie" else qa.answers[0])
                    assert int(qa.answers[0]) == values[args[0]]
                elif kind == "max":
                    assert qa.answers == [max(values, key=values.get)]
                elif kind == "min":
                    assert qa.answers == [min(values, key=values.get)]
                elif kind == "diff":
                    assert float(qa.answers[0]) == abs(values[args[0]] - values[args[1]])
                elif kind == "sum":
                    assert float(qa.answers[0]) == values[args[0]] + values[args[1]]
                elif kind == "gt":
                    assert qa.answers == ["Yes" if values[args[0]] > values[args[1]] else "No"]
                elif kind == "mean":
                    assert float(qa.answers[0]) == pytest.approx(sum(values.values()) / len(values), abs=0.05)
                else:
                    raise AssertionError(qa.key)


def test_preference_rejections_are_wrong_but_plausible():
    rng = random.Random(0)
    for i in range(20):
        s = sentences.generate_sentence(rng)
        bad = preferences.corrupt_transcript(s, rng)
        assert bad != s and len(bad.split()) >= len(s.split())
        page = documents.draw_document(random.Random(i))
        for qa in page.qas:
            wrong = preferences.wrong_answer(qa, preferences._document_alternatives(page, qa), rng)
            assert wrong.lower() not in {a.lower() for a in qa.answers}


# ----------------------------------------------------------------------------------------
# built corpora (tiny)
# ----------------------------------------------------------------------------------------
def test_manifests_are_read_by_the_trainer(built):
    root, out = built
    assert set(out) == set(CORPORA)
    kinds = {"speech": "asr", "documents": "vqa", "charts": "vqa", "joint": "chat", "preferences": "preference"}
    for name, manifests in out.items():
        assert {"train", "dev", "test"} <= set(manifests)
        assert all(p.parent.name == f"{name}-{SEED}-v1-tiny" and p.parent.parent == root for p in manifests.values())
        for split, path in manifests.items():
            samples = read_manifest(path)
            assert samples and all(s.kind == kinds[name] for s in samples)
            for s in samples:
                for msg in s.messages:
                    for part in msg["content"] if isinstance(msg["content"], list) else []:
                        if part["type"] in ("image", "audio"):
                            assert Path(part[part["type"]]).is_file()
    rows = [json.loads(line) for line in out["charts"]["test"].read_text().splitlines()]
    assert {r["source"] for r in rows} == set(charts.SOURCES)
    for source in charts.SOURCES:
        sub = [json.loads(line) for line in out["charts"][f"test_{source}"].read_text().splitlines()]
        assert sub and all(r["source"] == source for r in sub)


def test_speech_splits_share_no_sentence_and_audio_matches_text(built, tmp_path):
    _, out = built
    texts = {split: [json.loads(line)["text"] for line in p.read_text().splitlines()]
             for split, p in out["speech"].items()}
    assert not set(texts["train"]) & set(texts["test"]) and not set(texts["train"]) & set(texts["dev"])
    row = json.loads(out["speech"]["test"].read_text().splitlines()[0])
    audio, sr = sf.read(out["speech"]["test"].parent / row["audio"], dtype="int16")
    assert sr == 16000 and row["duration"] == pytest.approx(len(audio) / sr, abs=1e-3)
    # the clip is exactly the recorded text spoken with the recorded style
    write_wav(tmp_path / "check.wav", speak(row["text"], row["voice"], row["rate"], row["pitch"]))
    assert (tmp_path / "check.wav").read_bytes() == (out["speech"]["test"].parent / row["audio"]).read_bytes()
    # joint: the spoken question is the row's question
    jrow = json.loads(out["joint"]["train"].read_text().splitlines()[1])
    jaudio, _ = sf.read(out["joint"]["train"].parent / jrow["messages"][0]["content"][1]["audio"], dtype="int16")
    ref = np.clip(np.round(speak(jrow["question"], jrow["voice"], jrow["rate"], jrow["pitch"]) * 32767), -32768, 32767)
    assert np.array_equal(jaudio, ref.astype(np.int16))
    assert jrow["messages"][1]["content"] == jrow["answers"][0]


def test_same_seed_same_bytes_other_seed_differs(built, tmp_path):
    root, out = built
    again = build_corpora(tmp_path / "a", SEED, "tiny")
    for name in CORPORA:
        assert _tree(out[name]["train"].parent) == _tree(again[name]["train"].parent), name
    code = (f"from molora.synthetic.build import build_corpora; "
            f"build_corpora({str(tmp_path / 'c')!r}, {SEED}, 'tiny', names=['speech', 'joint'])")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
    for name in ("speech", "joint"):  # another process: the same bytes
        assert _tree(tmp_path / "c" / f"{name}-{SEED}-v1-tiny") == _tree(out[name]["train"].parent), name
    other = build_corpora(tmp_path / "b", SEED + 1, "tiny", names=["speech", "charts"])
    for name in ("speech", "charts"):
        assert out[name]["train"].read_bytes() != other[name]["train"].read_bytes()
        assert _tree(out[name]["train"].parent) != _tree(other[name]["train"].parent)


def test_process_pool_gives_the_same_items(tmp_path):
    from molora.synthetic import documents as d
    from molora.synthetic import speech_corpus as sc

    items = [(str(tmp_path / "serial"), SEED, "dev", i, f"one two {w}") for i, w in enumerate(sentences.COLOURS[:6])]
    serial = parallel_map(sc._clip, items, workers=1)
    pooled = parallel_map(sc._clip, [(str(tmp_path / "pool"), *it[1:]) for it in items], workers=2, min_parallel=0)
    assert serial == pooled
    pages = [(str(tmp_path / "serial"), SEED, "dev", i) for i in range(6)]
    assert parallel_map(d._page, pages, workers=1) == parallel_map(
        d._page, [(str(tmp_path / "pool"), *p[1:]) for p in pages], workers=2, min_parallel=0)
    assert _tree(tmp_path / "serial") == _tree(tmp_path / "pool")


def test_second_build_reuses_the_cache(built):
    root, out = built
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    again = build_corpora(root, SEED, "tiny")
    assert again == out
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert after == before


def test_lookup_drills_answers_are_in_the_text_by_construction():
    """molora/synthetic/lookup.py: key-value rows answer with the value written after the key (or
    the key before the value), repeat rows with the text itself, page rows with an accepted answer
    of the drawn page; the same seed gives the same rows, another seed other rows."""
    import re

    from molora.synthetic.lookup import PROMPT, lookup_conversations

    rows = lookup_conversations(60, seed=5)
    assert rows == lookup_conversations(60, seed=5) and rows != lookup_conversations(60, seed=6)
    head, _, tail = PROMPT.partition("{text}")
    kinds = {"page": 0, "keys": 0, "repeat": 0}
    for k, (user, assistant) in enumerate(rows):
        assert user["role"] == "user" and assistant["role"] == "assistant"
        q, a = user["content"], assistant["content"]
        kind = ("page", "keys", "repeat")[k % 3]
        kinds[kind] += 1
        if kind == "repeat":
            assert q == a + "\nRepeat the text."
            continue
        text, question = q.rsplit("\n", 2)[0], q.rsplit("\n", 2)[1]
        if kind == "keys":
            pairs = re.findall(r"([A-Z][a-z]+)(?:: | = | )(\S+)", text)
            m = re.fullmatch(r"What is the (\w+)\?", question)
            if m:
                assert (m.group(1).title(), a) in pairs, (text, question, a)
            else:
                value = re.fullmatch(r"Which has (\S+)\?", question).group(1)
                assert (a, value) in pairs, (text, question, a)
        elif not re.search(r"difference|sum|total .* combined|add|average|exceed|more|greater|highest|lowest|"
                           r"most|least", question):
            assert a.lstrip("$") in text, (text, question, a)
    assert all(v >= 20 for v in kinds.values())
    with pytest.raises(ValueError, match="look-up drill kinds"):
        lookup_conversations(3, seed=0, kinds=("pages",))
