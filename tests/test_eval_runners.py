"""The evaluation runners end to end on a tiny random model: result files in the published
formats, summaries that recompute from those files, resume, and clear errors.

Predictions of a random model are noise; what is checked is the plumbing and that every
reported number can be recomputed from the per-item files with the metric functions.
"""
from __future__ import annotations

import json

import pytest
import soundfile as sf

from evalkit import Scripted, page, read_rows, save_tiny
from molora.cli import main as cli
from molora.eval import anls, mean_anls, normalizer_name, relaxed_accuracy, word_error_rate
from molora.eval.asr import PROTOCOLS, evaluate_asr, join_chunks, resolve_sets, score_rows
from molora.eval.chartqa import evaluate_chartqa
from molora.eval.docvqa import evaluate_docvqa

CLIPS = ["the cat sat on the mat", "hello world", "twenty five red apples", "good morning", "[noise]"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("model") / "tiny"
    model, processor = save_tiny(d)
    return model, processor, d


@pytest.fixture(scope="module")
def asr_manifest(tmp_path_factory):
    from molora.synthetic.speech import speak

    root = tmp_path_factory.mktemp("asr")
    rows = []
    for i, text in enumerate(CLIPS):
        sf.write(root / f"clip{i}.wav", speak(text), 16000)
        rows.append({"audio": f"clip{i}.wav", "text": text})
    path = root / "clips.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------------------
# ASR
# ----------------------------------------------------------------------------------------
def test_asr_manifest_run_is_leaderboard_format_and_recomputable(tiny, asr_manifest, tmp_path, capsys):
    _, _, model_dir = tiny
    out = tmp_path / "out"
    rc = cli(["eval", "asr", "--model", str(model_dir), "--manifest", str(asr_manifest), "--output-dir", str(out),
              "--batch-size", "2", "--max-new-tokens", "6", "--device", "cpu"])
    assert rc == 0
    rows = read_rows(out / "clips.jsonl")
    # "[noise]" normalises to "" and is dropped before inference
    assert len(rows) == 4 and {r["text"] for r in rows} == set(CLIPS[:4])
    for r in rows:
        assert set(r) >= {"audio_filepath", "duration", "time", "text", "pred_text"}
        assert r["time"] > 0 and r["duration"] > 0
    durations = [r["duration"] for r in rows]
    assert durations == sorted(durations, reverse=True)            # longest first
    summary = json.loads((out / "summary.json").read_text())
    s = summary["sets"]["clips"]
    expected = word_error_rate([r["text"] for r in rows], [r["pred_text"] for r in rows])
    assert s["wer"] == round(expected, 2)
    assert s["rtfx"] == round(sum(durations) / sum(r["time"] for r in rows), 4)     # the leaderboard's 4 decimals
    assert s["dropped_before_inference"] == 1 and s["items"] == 4
    assert summary["average_wer"] == s["wer"]
    # own data is scored with the default (current) protocol, named with the code it reproduces
    assert summary["normalizer"] == normalizer_name("open-asr-2026")
    assert summary["scoring"]["reproduces"] == "huggingface/open_asr_leaderboard@d1e99b25524814332d6868a5645e568670834cfb"
    assert summary["settings"]["batch_size"] == 2 and summary["settings"]["device"] == "cpu"
    assert summary["settings"]["dtype"] == "float32" and summary["protocol"] == "custom"
    assert "warm-up" in summary["timing"]
    assert f"{s['wer']:.2f}" in (out / "summary.md").read_text()


def test_asr_resumes_after_a_crash_without_redoing_items(tiny, asr_manifest, tmp_path):
    model, processor, _ = tiny
    sets = resolve_sets(manifests=[str(asr_manifest)]).sets
    out = tmp_path / "out"
    real_generate = model.generate
    calls = {"n": 0, "crash_at": 3}

    def counting_generate(*a, **k):
        calls["n"] += 1
        if calls["n"] == calls["crash_at"]:
            raise RuntimeError("simulated crash")
        return real_generate(*a, **k)

    model.generate = counting_generate
    try:
        # call 1 = warm-up, call 2 = first timed batch (2 clips written), call 3 crashes
        with pytest.raises(RuntimeError, match="simulated crash"):
            evaluate_asr(model, processor, sets, out, batch_size=2, max_new_tokens=4)
        first = read_rows(out / "clips.jsonl")
        assert len(first) == 2
        with open(out / "clips.jsonl", "a") as f:       # a row cut short by the crash
            f.write('{"id": "clip3.wav", "audio_fi')
        calls.update(n=0, crash_at=-1)
        summary = evaluate_asr(model, processor, sets, out, batch_size=2, max_new_tokens=4)
    finally:
        model.generate = real_generate
    # 2 clips left -> 1 warm-up + 1 batch; the finished rows are untouched
    assert calls["n"] == 2
    rows = read_rows(out / "clips.jsonl")
    assert len(rows) == 4 and len({r["id"] for r in rows}) == 4
    assert rows[:2] == first
    assert summary["sets"]["clips"]["generated_this_run"] == 2
    assert summary["sets"]["clips"]["wer"] == round(
        word_error_rate([r["text"] for r in rows], [r["pred_text"] for r in rows]), 2)
    # a third run has nothing to do: no generate call at all
    calls.update(n=0)
    model.generate = counting_generate
    try:
        evaluate_asr(model, processor, sets, out, batch_size=2, max_new_tokens=4)
    finally:
        model.generate = real_generate
    assert calls["n"] == 0


def test_unknown_set_is_a_clear_error(capsys):
    assert cli(["eval", "asr", "--model", "tiny", "--sets", "librispeech_test.clean,nosuchset",
                "--output-dir", "x"]) == 2
    err = capsys.readouterr().err
    assert "nosuchset" in err and "ami_test" in err and "ami_cleaned_test" in err and "open-asr-2026" in err
    # sets of two protocols cannot be scored together
    assert cli(["eval", "asr", "--model", "tiny", "--sets", "tedlium_test,ami_cleaned_test", "--output-dir", "x"]) == 2
    assert "cannot be scored together" in capsys.readouterr().err


def test_unreachable_hub_set_names_what_to_download(monkeypatch, tmp_path, capsys):
    import datasets
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    assert cli(["eval", "asr", "--model", "tiny", "--sets", "librispeech_test.clean",
                "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err     # a set of both protocols: the current one's dataset
    assert "hf-audio/open-asr-leaderboard" in err and "save_to_disk" in err
    assert "--data DIR --sets librispeech_test.clean" in err
    assert cli(["eval", "asr", "--model", "tiny", "--sets", "ami_test", "--output-dir", str(tmp_path)]) == 2
    assert "hf-audio/esb-datasets-test-only-sorted" in capsys.readouterr().err    # classic only
    assert cli(["eval", "asr", "--model", "tiny", "--sets", "earnings22_cleaned_aa_chunked_test",
                "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "ArtificialAnalysis/Earnings22-Cleaned-AA-chunked" in err and "ArtificialAnalysis/Earnings22-Cleaned-AA" in err
    assert "save_chunked_set" in err


def test_manifest_row_without_text_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"audio": "a.wav", "text": "ok"}) + "\n" + json.dumps({"audio": "b.wav"}) + "\n")
    assert cli(["eval", "asr", "--model", "tiny", "--manifest", str(bad), "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2" in err and "text" in err


def test_protocol_sets():
    label, complete, sets, protocol = resolve_sets("open-asr")
    assert complete and label == protocol == "open-asr" and len(sets) == 8
    assert {s.dataset for s in sets} == {"hf-audio/esb-datasets-test-only-sorted"}
    assert [s.prompt for s in sets if s.config == "earnings22"] == ["Transcribe the audio clip to English text."]
    label, complete, sets, protocol = resolve_sets("open-asr-2026")
    assert complete and len(sets) == 7 and not any(s.config == "tedlium" for s in sets)
    # the leaderboard's current set list (eval_utils' "public" family at d1e99b2) and where each set comes from
    assert sorted(s.name for s in sets) == ["ami_cleaned_test", "earnings22_cleaned_aa_chunked_test",
                                            "gigaspeech_cleaned_test", "librispeech_test.clean",
                                            "librispeech_test.other", "spgispeech_test", "voxpopuli_cleaned_aa_test"]
    chunked = next(s for s in sets if s.name == "earnings22_cleaned_aa_chunked_test")
    assert chunked.dataset == "ArtificialAnalysis/Earnings22-Cleaned-AA-chunked"
    assert chunked.transcripts == "ArtificialAnalysis/Earnings22-Cleaned-AA"
    assert {s.dataset for s in sets if s is not chunked} == {"hf-audio/open-asr-leaderboard"}
    assert resolve_sets().protocol == "open-asr-2026"                    # the default: the leaderboard today
    # --sets X picks X's protocol; a name both protocols have takes --protocol (default: the current one)
    sel = resolve_sets("librispeech_test.other,ami_test")
    assert sel.protocol == "open-asr" and not sel.complete
    assert [s.name for s in sel.sets] == ["librispeech_test.other", "ami_test"]
    assert resolve_sets("librispeech_test.other").protocol == "open-asr-2026"
    assert resolve_sets("librispeech_test.other", protocol="open-asr").sets[0].dataset == \
        "hf-audio/esb-datasets-test-only-sorted"
    assert set(PROTOCOLS) == {"open-asr", "open-asr-2026"}


def test_chunked_predictions_are_joined_per_call_in_chunk_order():
    rows = [{"text": "good morning everyone", "pred_text": "everyone", "duration": 1.0, "time": 0.1,
             "parent_id": "call1", "chunk_index": 1},
            {"text": "good morning everyone", "pred_text": "good morning", "duration": 1.0, "time": 0.1,
             "parent_id": "call1", "chunk_index": 0},
            {"text": "hello", "pred_text": "hello", "duration": 1.0, "time": 0.1}]
    # joined in chunk order: "good morning everyone" vs the call's text -> 0 errors; "hello" -> 0
    s = score_rows(rows)
    assert s["wer"] == 0.0 and s["reference_words"] == 4 and s["scored_utterances"] == 2
    # the leaderboard strips each chunk's prediction and leaves empty ones out before joining
    rows[0]["pred_text"], rows[1]["pred_text"] = "  everyone ", " good  morning"
    rows.append(dict(rows[0], chunk_index=2, pred_text="   "))
    assert join_chunks(rows) == (["hello", "good morning everyone"], ["hello", "good  morning everyone"])


# ----------------------------------------------------------------------------------------
# DocVQA and ChartQA
# ----------------------------------------------------------------------------------------
def test_docvqa_local_dataset_anls_and_submission(tiny, tmp_path):
    import datasets

    model, processor, _ = tiny
    answers = [["paris"], ["abcd"], ["42", "forty two"], ["blue"]]
    feats = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                               "answers": datasets.Sequence(datasets.Value("string")),
                               "questionId": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict({"image": [page(i) for i in range(4)],
                                     "question": [f"question {i}?" for i in range(4)], "answers": answers,
                                     "questionId": [50 + i for i in range(4)]}, features=feats)
    ds.save_to_disk(tmp_path / "val")
    preds = ["Paris", "abxy", "forty two.", "red"]
    # by hand: 1.0 (case); 2/4 = 0.5 -> kept 0.5; best "forty two": 1 - 1/10 = 0.9; "red" vs "blue" 3/4 -> 0
    out = tmp_path / "out"
    s = evaluate_docvqa(model, Scripted(processor, preds), str(tmp_path / "val"), out, batch_size=3,
                        max_new_tokens=4)
    rows = read_rows(out / "predictions.jsonl")
    assert [r["id"] for r in rows] == ["50", "51", "52", "53"] and [r["prediction"] for r in rows] == preds
    assert [r["anls"] for r in rows] == pytest.approx([1.0, 0.5, 0.9, 0.0])
    assert s["anls"] == pytest.approx(2.4 / 4)
    assert s["anls"] == pytest.approx(mean_anls([r["prediction"] for r in rows], [r["answers"] for r in rows]))
    assert all(r["anls"] == anls(r["prediction"], r["answers"]) for r in rows)
    # test split: hidden answers -> submission file
    ds.remove_columns("answers").save_to_disk(tmp_path / "test")
    evaluate_docvqa(model, processor, str(tmp_path / "test"), tmp_path / "sub", split="test", batch_size=4,
                    max_new_tokens=3)
    sub = json.loads((tmp_path / "sub" / "submission.json").read_text())
    assert [e["questionId"] for e in sub] == [50, 51, 52, 53] and all(isinstance(e["answer"], str) for e in sub)


def test_docvqa_cli_over_a_manifest(tiny, tmp_path):
    _, _, model_dir = tiny
    for i in range(3):
        page(i).save(tmp_path / f"doc{i}.png")
    (tmp_path / "qa.jsonl").write_text("".join(
        json.dumps({"image": f"doc{i}.png", "question": "what number?", "answers": [str(7 * i)], "id": f"q{i}"})
        + "\n" for i in range(3)))
    out = tmp_path / "out"
    assert cli(["eval", "docvqa", "--model", str(model_dir), "--data", str(tmp_path / "qa.jsonl"),
                "--output-dir", str(out), "--batch-size", "2", "--max-new-tokens", "4"]) == 0
    rows = read_rows(out / "predictions.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    assert [r["id"] for r in rows] == ["q0", "q1", "q2"]
    assert summary["anls"] == pytest.approx(mean_anls([r["prediction"] for r in rows], [r["answers"] for r in rows]))
    assert (out / "summary.md").exists()


def test_chartqa_subsets_from_a_column(tiny, tmp_path):
    import datasets

    model, processor, _ = tiny
    targets = ["100", "yes", "45", "1995", "Paris"]
    types = ["human_test", "human_test", "augmented_test", "augmented_test", "human_test"]
    feats = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                               "answer": datasets.Value("string"), "type": datasets.Value("string")})
    datasets.Dataset.from_dict({"image": [page(i) for i in range(5)], "question": [f"q{i}?" for i in range(5)],
                               "answer": targets, "type": types}, features=feats).to_parquet(tmp_path / "c.parquet")
    preds = ["104", "Yes.", "45%", "1995.", "paris"]
    # by hand: 104 vs 100 -> 4 % ok; "Yes." != "yes"; 0.45 vs 45 wrong; 1995.0 == 1995 ok; case-insensitive ok
    # human: 100/yes/Paris -> 2 of 3; augmented: 45/1995 -> 1 of 2; overall 3 of 5
    out = tmp_path / "out"
    s = evaluate_chartqa(model, Scripted(processor, preds), [(str(tmp_path / "c.parquet"), None)], out,
                         batch_size=2, max_new_tokens=3)
    rows = read_rows(out / "predictions.jsonl")
    assert [r["subset"] for r in rows] == ["human", "human", "augmented", "augmented", "human"]
    assert [r["correct"] for r in rows] == [True, False, False, True, True]
    sc = s["scores"]
    assert sc["human"]["accuracy"] == pytest.approx(2 / 3) and sc["augmented"]["accuracy"] == pytest.approx(1 / 2)
    assert sc["overall"]["accuracy"] == pytest.approx(3 / 5)
    recomputed = [relaxed_accuracy(r["prediction"], r["answers"][0]) for r in rows]
    assert sc["overall"]["correct"] == sum(recomputed)


def test_chartqa_cli_two_manifests(tiny, tmp_path):
    _, _, model_dir = tiny
    for i in range(4):
        page(i).save(tmp_path / f"c{i}.png")
    for name, idx in (("human", [0, 1]), ("augmented", [2, 3])):
        (tmp_path / f"{name}.jsonl").write_text("".join(
            json.dumps({"image": f"c{i}.png", "question": "value?", "answers": [str(i)], "id": i % 2}) + "\n"
            for i in idx))
    out = tmp_path / "out"
    assert cli(["eval", "chartqa", "--model", str(model_dir), "--human", str(tmp_path / "human.jsonl"),
                "--augmented", str(tmp_path / "augmented.jsonl"), "--output-dir", str(out),
                "--max-new-tokens", "3"]) == 0
    rows = read_rows(out / "predictions.jsonl")
    assert sorted(r["id"] for r in rows) == ["augmented/0", "augmented/1", "human/0", "human/1"]
    sc = json.loads((out / "summary.json").read_text())["scores"]
    assert sc["human"]["questions"] == 2 and sc["augmented"]["questions"] == 2 and sc["overall"]["questions"] == 4
    assert sc["overall"]["correct"] == sum(relaxed_accuracy(r["prediction"], r["answers"][0]) for r in rows)


def test_vqa_offline_hub_source_is_a_clear_error(monkeypatch, tmp_path, capsys):
    import datasets
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    assert cli(["eval", "chartqa", "--model", "tiny", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "lmms-lab/ChartQA" in err and "--data DIR" in err


def test_asr_protocol_set_from_a_local_datasets_dir(tiny, asr_manifest, tmp_path):
    """`--data DIR --sets NAME` reads DIR/NAME (save_to_disk) with the hub set's columns."""
    import datasets

    _, _, model_dir = tiny
    root = asr_manifest.parent
    ds = datasets.Dataset.from_dict(
        {"audio": [str(root / f"clip{i}.wav") for i in range(3)], "text": CLIPS[:3],
         "id": ["a", "b", "c"]}).cast_column("audio", datasets.Audio(sampling_rate=16000))
    ds.save_to_disk(tmp_path / "data" / "librispeech_test.clean")
    out = tmp_path / "out"
    assert cli(["eval", "asr", "--model", str(model_dir), "--data", str(tmp_path / "data"), "--sets",
                "librispeech_test.clean", "--output-dir", str(out), "--max-new-tokens", "3",
                "--warmup-batches", "0"]) == 0
    rows = read_rows(out / "librispeech_test.clean.jsonl")
    assert sorted(r["id"] for r in rows) == ["a", "b", "c"]
    # no length column: durations come from the audio headers
    assert all(r["duration"] == pytest.approx(sf.info(root / f"clip{'abc'.index(r['id'])}.wav").duration)
               for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == "open-asr-2026 (subset: librispeech_test.clean)" and not summary["complete_protocol"]
    assert summary["sets"]["librispeech_test.clean"]["wer"] == round(
        word_error_rate([r["text"] for r in rows], [r["pred_text"] for r in rows]), 2)


def test_a_new_asr_set_is_one_entry_in_its_protocol(tiny, asr_manifest, tmp_path, monkeypatch):
    """Adding an ASR set takes one `AsrSet` in `eval/protocols.py`'s protocol: set selection, loading
    (here from `--data DIR`), scoring and the summary pick it up with nothing else changed."""
    import dataclasses

    import datasets

    from molora.eval.protocols import AsrSet

    p = PROTOCOLS["open-asr-2026"]
    monkeypatch.setitem(PROTOCOLS, p.name, dataclasses.replace(
        p, sets=p.sets + (AsrSet("my_meetings_test", "me/my-meetings", None, "test"),)))
    _, _, model_dir = tiny
    root = asr_manifest.parent
    ds = datasets.Dataset.from_dict({"audio": [str(root / f"clip{i}.wav") for i in range(2)], "text": CLIPS[:2],
                                     "id": ["m1", "m2"]}).cast_column("audio", datasets.Audio(sampling_rate=16000))
    ds.save_to_disk(tmp_path / "data" / "my_meetings_test")
    out = tmp_path / "out"
    assert cli(["eval", "asr", "--model", str(model_dir), "--data", str(tmp_path / "data"), "--sets",
                "my_meetings_test", "--output-dir", str(out), "--max-new-tokens", "3", "--warmup-batches", "0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == "open-asr-2026 (subset: my_meetings_test)"
    rows = read_rows(out / "my_meetings_test.jsonl")
    assert summary["sets"]["my_meetings_test"]["wer"] == round(
        word_error_rate([r["text"] for r in rows], [r["pred_text"] for r in rows]), 2)
