"""Evaluations of users' own data (issue 23): NeMo / Open ASR manifests (and molora's own result files)
read back, media paths resolved against the data file whichever flag names it, paths that break
resolution (NUL, symlink loops), a torn run.json, runs where nothing could be scored, manifests that
share a file name, saved predictions scored again, RTFx's note, titles and 0..1 scores from the
user's data, and result files that never hold an item twice. What is checked is what the user sees:
the exit code, the one stderr line, and the files."""
from __future__ import annotations

import json
import os

import pytest
import soundfile as sf

from evalkit import page, read_rows, save_tiny
from molora.cli import main as cli
from molora.eval import word_error_rate
from molora.eval.report import ResultFile
from molora.synthetic.speech import speak

TEXTS = ["the cat sat on the mat", "hello world", "good morning"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model") / "tiny"
    save_tiny(d)
    return d


def clips(root, texts=TEXTS):
    root.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(texts):
        sf.write(root / f"clip{i}.wav", speak(text), 16000)
    return [(f"clip{i}.wav", text, sf.info(root / f"clip{i}.wav").duration) for i, text in enumerate(texts)]


def nemo_manifest(root, name="clips.jsonl", texts=TEXTS):
    """As NeMo writes a manifest: one JSON object per line, audio_filepath / duration / text."""
    m = root / name
    m.write_text("".join(json.dumps({"audio_filepath": f, "duration": round(d, 3), "text": t}) + "\n"
                         for f, t, d in clips(root, texts)))
    return m


def asr(model, *args):
    return cli(["eval", "asr", "--model", str(model), *map(str, args), "--max-new-tokens", "2", "--device", "cpu",
                "--batch-size", "2"])


def pages_manifest(root, name: str, draw: bool = True):
    """A VQA manifest of two questions over drawn pages (``draw=False``: the pages are missing)."""
    for i in range(2 if draw else 0):
        page(i).save(root / f"p{i}.png")
    m = root / name
    m.write_text("".join(json.dumps({"image": f"p{i}.png", "question": "q?", "answers": [str(7 * i)]}) + "\n"
                         for i in range(2)))
    return m


def vqa(model, task, data, out):
    return cli(["eval", task, "--model", str(model), "--data", str(data), "--output-dir", str(out),
                "--max-new-tokens", "2", "--device", "cpu"])


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "item/s" not in line
           and "it/s" not in line and not line.startswith(("\r", " "))]
    assert len(err) == 1 and err[0].startswith("molora eval: error: "), err
    return err[0]


# ----------------------------------------------------------------------------------------
# NeMo manifests, and molora's own results read back
# ----------------------------------------------------------------------------------------
def test_a_nemo_manifest_is_evaluated_and_its_results_read_back(model, tmp_path, capsys):
    m = nemo_manifest(tmp_path / "data")
    out = tmp_path / "out"
    assert asr(model, "--manifest", m, "--output-dir", out) == 0
    rows = read_rows(out / "clips.jsonl")
    assert sorted(r["text"] for r in rows) == sorted(TEXTS)
    assert {r["audio_filepath"] for r in rows} == {str((tmp_path / "data" / f"clip{i}.wav").resolve())
                                                   for i in range(3)}
    # the results file is itself a NeMo-style manifest: it reads back (its audio lives in data/, so the
    # outside-root rule applies and its hint says how to allow it)
    capsys.readouterr()
    assert asr(model, "--manifest", out / "clips.jsonl", "--output-dir", tmp_path / "again") == 2
    line = one_error_line(capsys)
    assert f"{(out / 'clips.jsonl').resolve()}:1" in line and "outside the data root" in line
    assert "--allow-outside-root" in line
    assert asr(model, "--manifest", out / "clips.jsonl", "--output-dir", tmp_path / "again",
               "--allow-outside-root") == 0
    again = read_rows(tmp_path / "again" / "clips.jsonl")
    assert sorted(r["text"] for r in again) == sorted(TEXTS)
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["skipped_count"] == 0


@pytest.mark.parametrize("flag, ext", [("--manifest", "jsonl"), ("--data", "jsonl"), ("--data", "csv")])
def test_media_resolve_against_the_data_file_not_the_working_folder(model, tmp_path, monkeypatch, flag, ext):
    import datasets

    data = tmp_path / "data"
    files = clips(data)
    if ext == "jsonl":
        path = nemo_manifest(data)
    else:
        path = data / "clips.csv"
        datasets.Dataset.from_dict({"audio": [f for f, _, _ in files], "text": [t for _, t, _ in files]}) \
            .to_csv(str(path))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    out = tmp_path / "out"
    assert asr(model, flag, os.path.relpath(path), "--output-dir", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_count"] == 0 and summary["sets"]["clips"]["items"] == 3


# ----------------------------------------------------------------------------------------
# paths that break resolution; a torn run.json
# ----------------------------------------------------------------------------------------
def test_nul_in_a_media_path_is_one_line(model, tmp_path, capsys):
    m = tmp_path / "nul.jsonl"
    m.write_text(json.dumps({"audio": "clip\u00000.wav", "text": "hi"}) + "\n")
    assert asr(model, "--manifest", m, "--output-dir", tmp_path / "out") == 2
    line = one_error_line(capsys)
    assert f"{m.resolve()}:1" in line and "NUL" in line


def test_a_symlink_loop_is_skipped_and_listed_or_stops_a_strict_run(model, tmp_path, capsys):
    data = tmp_path / "data"
    clips(data, TEXTS[:2])
    (data / "loop1.wav").symlink_to(data / "loop2.wav")
    (data / "loop2.wav").symlink_to(data / "loop1.wav")
    m = data / "clips.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in [{"audio": "clip0.wav", "text": TEXTS[0]},
                                                         {"audio": "loop1.wav", "text": "a loop"},
                                                         {"audio": "clip1.wav", "text": TEXTS[1]}]))
    out = tmp_path / "out"
    assert asr(model, "--manifest", m, "--output-dir", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == [{"source": f"{m.resolve()}:2", "item": str(data.resolve() / "loop1.wav"),
                                   "reason": "audio: symlink loop: the path never names a file"}]
    assert summary["sets"]["clips"]["items"] == 2
    capsys.readouterr()
    assert asr(model, "--manifest", m, "--output-dir", tmp_path / "strict", "--strict") == 2
    line = one_error_line(capsys)
    assert f"{m.resolve()}:2" in line and "loop1.wav" in line and "symlink loop" in line


@pytest.mark.parametrize("content", ['{"task": "asr", "produ', "not json at all", "[1, 2]",
                                     '{"task": "asr", "producer": {}, "sources": {}, "batch_sizes": 8}'])
def test_a_torn_run_json_is_one_line_and_nothing_is_lost(model, tmp_path, capsys, content):
    m = nemo_manifest(tmp_path / "data")
    out = tmp_path / "out"
    assert asr(model, "--manifest", m, "--output-dir", out) == 0
    before = (out / "clips.jsonl").read_bytes()
    (out / "run.json").write_text(content)
    capsys.readouterr()
    assert asr(model, "--manifest", m, "--output-dir", out) == 2
    line = one_error_line(capsys)
    assert f"{out / 'run.json'}:" in line and "--overwrite" in line and "another --output-dir" in line
    assert (out / "clips.jsonl").read_bytes() == before
    assert asr(model, "--manifest", m, "--output-dir", out, "--overwrite") == 0
    assert json.loads((out / "run.json").read_text())["task"] == "asr"
    assert json.loads((out / "summary.json").read_text())["sets"]["clips"]["generated_this_run"] == 3


# ----------------------------------------------------------------------------------------
# nothing scored; manifests sharing a name
# ----------------------------------------------------------------------------------------
def test_an_eval_where_no_clip_can_be_scored_fails(model, tmp_path, capsys):
    m = tmp_path / "gone.jsonl"
    m.write_text("".join(json.dumps({"audio_filepath": f"c{i}.wav", "duration": 1.0, "text": "hello"}) + "\n"
                         for i in range(5)))
    out = tmp_path / "out"
    assert asr(model, "--manifest", m, "--output-dir", out) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"molora eval: error: {m.resolve()}: no clip could be scored")
    assert f"{m.resolve()}:1 ({tmp_path.resolve() / 'c0.wav'}): file not found" in line and "and 2 more" in line
    assert json.loads((out / "summary.json").read_text())["skipped_count"] == 5      # every reason, on disk


@pytest.mark.parametrize("task", ["docvqa", "chartqa"])
def test_a_vqa_eval_where_no_question_can_be_scored_fails(model, tmp_path, capsys, task):
    m = pages_manifest(tmp_path, "qa.jsonl", draw=False)
    assert vqa(model, task, m, tmp_path / "o") == 2
    line = one_error_line(capsys)
    assert f"{m}: no question could be scored" in line and f"{m.resolve()}:1" in line and "file not found" in line


def test_manifests_sharing_a_file_name_are_evaluated_together(model, tmp_path):
    a = nemo_manifest(tmp_path / "a", texts=TEXTS[:2])
    b = nemo_manifest(tmp_path / "b", texts=TEXTS[2:])
    out = tmp_path / "out"
    assert asr(model, "--manifest", a, "--manifest", b, "--output-dir", out) == 0
    assert [r["text"] for r in read_rows(out / "a_clips.jsonl")] == TEXTS[:2]
    assert [r["text"] for r in read_rows(out / "b_clips.jsonl")] == TEXTS[2:]
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["sets"]) == ["a_clips", "b_clips"]
    # a re-run resumes both (nothing generated again)
    assert asr(model, "--manifest", a, "--manifest", b, "--output-dir", out) == 0
    assert all(v["generated_this_run"] == 0 for v in json.loads((out / "summary.json").read_text())["sets"].values())


# ----------------------------------------------------------------------------------------
# scoring saved predictions again; RTFx's note
# ----------------------------------------------------------------------------------------
def test_rescore_with_another_protocol_without_the_model(model, tmp_path, capsys, monkeypatch):
    m = nemo_manifest(tmp_path / "data")
    out = tmp_path / "out"
    assert asr(model, "--manifest", m, "--output-dir", out) == 0
    own = (out / "summary.json").read_bytes()
    rows = read_rows(out / "clips.jsonl")
    import molora.eval.generate as generate

    monkeypatch.setattr(generate, "load_model_and_processor", lambda *a, **k: pytest.fail("the model was loaded"))
    capsys.readouterr()
    assert cli(["eval", "rescore", str(out), "--protocol", "open-asr"]) == 0
    new = json.loads((out / "summary.rescored-open-asr.json").read_text())
    assert new["protocol"] == "open-asr" and new["scored_before_with"] == "open-asr-2026"
    assert new["sets"]["clips"]["wer"] == round(word_error_rate([r["text"] for r in rows],
                                                                [r["pred_text"] for r in rows], protocol="open-asr"), 2)
    assert new["normalizer"] != json.loads(own)["normalizer"]
    assert (out / "summary.json").read_bytes() == own                     # the run's summary is untouched
    assert "summary.rescored-open-asr.json" in capsys.readouterr().out
    # never overwritten silently
    assert cli(["eval", "rescore", str(out), "--protocol", "open-asr"]) == 2
    line = one_error_line(capsys)
    assert "summary.rescored-open-asr.json" in line and "already there" in line and "--overwrite" in line
    assert cli(["eval", "rescore", str(out), "--protocol", "open-asr", "--overwrite"]) == 0
    # a folder that is no eval output
    assert cli(["eval", "rescore", str(tmp_path / "data")]) == 2
    assert "no run.json here" in one_error_line(capsys)


def test_rescore_a_docvqa_run(model, tmp_path):
    m = pages_manifest(tmp_path, "qa.jsonl")
    out = tmp_path / "out"
    assert vqa(model, "docvqa", m, out) == 0
    assert cli(["eval", "rescore", str(out)]) == 0
    assert json.loads((out / "summary.rescored.json").read_text())["anls"] == \
        json.loads((out / "summary.json").read_text())["anls"]
    assert cli(["eval", "rescore", str(out), "--protocol", "open-asr"]) == 2


def test_rtfx_says_how_much_audio_it_was_measured_over(model, tmp_path, capsys):
    m = nemo_manifest(tmp_path / "data")
    out = tmp_path / "out"
    assert asr(model, "--manifest", m, "--output-dir", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    seconds = summary["audio_seconds"]
    assert 0 < seconds < 60
    assert summary["rtfx_note"].startswith(f"RTFx measured over {seconds:.1f} s of audio") and \
        "under 60 s" in summary["rtfx_note"]
    assert summary["sets"]["clips"]["rtfx_noisy"] is True and summary["settings"]["warmup_batches"] == 1
    assert summary["rtfx_note"] in capsys.readouterr().out
    assert summary["rtfx_note"] in (out / "summary.md").read_text()


# ----------------------------------------------------------------------------------------
# titles and 0..1 scores
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("task, key", [("docvqa", "anls"), ("chartqa", "scores")])
def test_vqa_titles_come_from_the_data_and_scores_are_0_to_1(model, tmp_path, capsys, task, key):
    m = pages_manifest(tmp_path, "invoices.jsonl")
    out = tmp_path / "out"
    capsys.readouterr()
    assert vqa(model, task, m, out) == 0
    printed = capsys.readouterr().out
    md = (out / "summary.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["title"] == "invoices.jsonl"
    assert "invoices.jsonl" in md.splitlines()[0] and "DocVQA" not in md and "ChartQA" not in md
    assert "x100" not in md
    score = summary["anls"] if key == "anls" else summary["scores"]["overall"]["accuracy"]
    assert f"{score:.4f}" in md and f"{score:.4f}" in printed and "(0..1" in printed


# ----------------------------------------------------------------------------------------
# results files never hold an item twice
# ----------------------------------------------------------------------------------------
def test_two_writers_of_one_results_file_write_each_item_once(tmp_path):
    path = tmp_path / "clips.jsonl"
    first, second = ResultFile(path), ResultFile(path)          # two runs that opened the folder together
    rows = [{"id": "a", "pred_text": "x"}, {"id": "b", "pred_text": "y"}]
    first.append(rows)
    second.append(rows + [{"id": "c", "pred_text": "z"}])
    assert [r["id"] for r in read_rows(path)] == ["a", "b", "c"]
    assert second.done == {"a", "b", "c"}


def test_a_doubled_results_file_is_deduplicated_on_resume(model, tmp_path):
    m = nemo_manifest(tmp_path / "data")
    out = tmp_path / "out"
    assert asr(model, "--manifest", m, "--output-dir", out) == 0
    once = (out / "clips.jsonl").read_text()
    (out / "clips.jsonl").write_text(once + once)             # what two concurrent runs left behind
    assert asr(model, "--manifest", m, "--output-dir", out) == 0
    assert (out / "clips.jsonl").read_text() == once
    assert json.loads((out / "summary.json").read_text())["sets"]["clips"]["items"] == 3


def test_an_audiofolder_is_evaluated(model, tmp_path, monkeypatch):
    """Hugging Face's AudioFolder layout (clips + metadata.csv with file_name / transcription), which
    `datasets` itself can only build with torchcodec installed."""
    data = tmp_path / "folder"
    files = clips(data)
    (data / "metadata.csv").write_text("file_name,transcription\n" + "".join(f"{f},{t}\n" for f, t, _ in files))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    out = tmp_path / "out"
    assert asr(model, "--data", data, "--output-dir", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_count"] == 0 and summary["sets"]["folder"]["items"] == 3
    assert sorted(r["text"] for r in read_rows(out / "folder.jsonl")) == sorted(TEXTS)


# ----------------------------------------------------------------------------------------
# One process at a time in an output folder
# ----------------------------------------------------------------------------------------
def test_an_eval_into_a_folder_in_use_is_refused_and_writes_nothing(model, tmp_path, capsys):
    """Two evals into one folder doubled every row; now the folder belongs to one process (its lock),
    as a training run's does: the second is refused with one line naming the holder."""
    import subprocess
    import sys

    m = nemo_manifest(tmp_path / "data")
    out = tmp_path / "out"
    # another process holds the folder (a real one: the lock is per open file, so the holder must be
    # another process for the refusal to be what a user sees)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom molora.folder_lock import hold_folder\n"
                               f"with hold_folder({str(out)!r}, what='molora eval asr'):\n"
                               "    print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert asr(model, "--manifest", m, "--output-dir", out) == 2
        line = one_error_line(capsys)
        assert f"{out}: in use by molora eval asr (pid {holder.pid}" in line, line
        assert sorted(p.name for p in out.iterdir()) == [".molora.lock"]
        assert cli(["eval", "rescore", str(out)]) == 2
        assert "in use by molora eval asr" in one_error_line(capsys)
    finally:
        holder.kill()
        holder.wait()
    assert asr(model, "--manifest", m, "--output-dir", out) == 0  # the lock dies with its holder
    assert len(read_rows(out / "clips.jsonl")) == len(TEXTS)
