"""DocVQA and ChartQA in the layouts people download, made here in miniature: the official DocVQA
annotation file + documents folder, ChartQA's release folder, and the hub datasets the harnesses use
(lmms-lab/DocVQA, HuggingFaceM4/ChartQA) saved with ``save_to_disk``. Each is scored through
``molora eval docvqa|chartqa`` (results recomputed from the per-question file) or through the Python
API with scripted answers (scores known by hand). Unknown layouts are errors listing what is accepted."""
from __future__ import annotations

import json

import pytest

from evalkit import Scripted, page, read_rows, save_tiny
from molora.cli import main as cli
from molora.eval import anls, mean_anls, relaxed_accuracy
from molora.eval.chartqa import accuracy_by_subset, evaluate_chartqa
from molora.eval.docvqa import evaluate_docvqa

DOC_ANSWERS = [["paris"], ["abcd"], ["42", "forty two"], ["blue"]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("model") / "tiny"
    model, processor = save_tiny(d)
    return model, processor, d


def docvqa_release(root, split="val", answers=True):
    """``root/<split>/<split>_v1.0.json`` + ``documents/``, as the DocVQA download unpacks."""
    folder = root / split
    (folder / "documents").mkdir(parents=True)
    data = []
    for i, ans in enumerate(DOC_ANSWERS):
        page(i).save(folder / "documents" / f"doc_{i}.png")
        rec = {"questionId": 49000 + i, "question": f"What is field {i}?", "question_types": ["form"],
               "image": f"documents/doc_{i}.png", "docId": 100 + i, "ucsf_document_id": f"abc{i}",
               "ucsf_document_page_no": "1", "data_split": split}
        if answers:
            rec["answers"] = ans
        data.append(rec)
    path = folder / f"{split}_v1.0.json"
    path.write_text(json.dumps({"dataset_name": "docvqa", "dataset_version": "1.0", "dataset_split": split,
                                "data": data}))
    return path


CHART = {"human": [("How many in 2019?", "100"), ("Is it rising?", "Yes"), ("Which city?", "Paris")],
         "augmented": [("What is the share?", "45"), ("What year?", "1995")]}


def chartqa_release(root):
    """``root/ChartQA Dataset/test/{png/, test_human.json, test_augmented.json}`` as the release unpacks."""
    test = root / "ChartQA Dataset" / "test"
    (test / "png").mkdir(parents=True)
    for subset, qas in CHART.items():
        rows = []
        for i, (q, a) in enumerate(qas):
            name = f"{subset}_{i}.png"
            page(i + (10 if subset == "augmented" else 0)).save(test / "png" / name)
            rows.append({"imgname": name, "query": q, "label": a})
        (test / f"test_{subset}.json").write_text(json.dumps(rows))
    return root / "ChartQA Dataset"


# ----------------------------------------------------------------------------------------
# DocVQA
# ----------------------------------------------------------------------------------------
def test_docvqa_official_file_through_the_cli_is_recomputable(tiny, tmp_path):
    _, _, model_dir = tiny
    ann = docvqa_release(tmp_path)
    for data, out in ((ann, tmp_path / "out_file"), (ann.parent, tmp_path / "out_folder"), (tmp_path, tmp_path / "o3")):
        assert cli(["eval", "docvqa", "--model", str(model_dir), "--data", str(data), "--output-dir", str(out),
                    "--batch-size", "3", "--max-new-tokens", "4"]) == 0
        rows = read_rows(out / "predictions.jsonl")
        assert [r["id"] for r in rows] == [str(49000 + i) for i in range(4)]
        assert [r["answers"] for r in rows] == DOC_ANSWERS
        assert [r["question"] for r in rows] == [f"What is field {i}?" for i in range(4)]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["questions"] == 4 and summary["skipped_count"] == 0
        assert summary["anls"] == pytest.approx(mean_anls([r["prediction"] for r in rows], DOC_ANSWERS))
        assert all(r["anls"] == anls(r["prediction"], r["answers"]) for r in rows)
        assert "lmms-eval" in summary["reproduces"]


def test_docvqa_official_layout_scores_by_hand(tiny, tmp_path):
    model, processor, _ = tiny
    ann = docvqa_release(tmp_path)
    preds = ["Paris", "abxy", "forty two.", "red"]
    # by hand: 1.0 (case); 2/4 = 0.5 -> kept 0.5; best "forty two": 1 - 1/10 = 0.9; "red" vs "blue" 3/4 -> 0
    s = evaluate_docvqa(model, Scripted(processor, preds), str(ann), tmp_path / "out", batch_size=2, max_new_tokens=3)
    assert s["anls"] == pytest.approx(2.4 / 4)


def test_docvqa_official_test_file_makes_a_submission(tiny, tmp_path):
    _, _, model_dir = tiny
    ann = docvqa_release(tmp_path, split="test", answers=False)
    out = tmp_path / "out"
    assert cli(["eval", "docvqa", "--model", str(model_dir), "--data", str(ann.parent), "--split", "test",
                "--output-dir", str(out), "--max-new-tokens", "3"]) == 0
    sub = json.loads((out / "submission.json").read_text())
    assert [e["questionId"] for e in sub] == [49000, 49001, 49002, 49003]


def test_docvqa_hub_layout_saved_to_disk(tiny, tmp_path):
    """lmms-lab/DocVQA (config DocVQA, split validation): its columns and features, saved with save_to_disk."""
    import datasets

    model, processor, _ = tiny
    feats = datasets.Features({
        "questionId": datasets.Value("string"), "question": datasets.Value("string"),
        "question_types": datasets.Sequence(datasets.Value("string")), "image": datasets.Image(),
        "docId": datasets.Value("int64"), "ucsf_document_id": datasets.Value("string"),
        "ucsf_document_page_no": datasets.Value("string"), "answers": datasets.Sequence(datasets.Value("string")),
        "data_split": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({
        "questionId": [str(49000 + i) for i in range(4)], "question": [f"q{i}?" for i in range(4)],
        "question_types": [["form"]] * 4, "image": [page(i) for i in range(4)], "docId": list(range(4)),
        "ucsf_document_id": ["x"] * 4, "ucsf_document_page_no": ["1"] * 4, "answers": DOC_ANSWERS,
        "data_split": ["val"] * 4}, features=feats)
    datasets.DatasetDict({"validation": ds}).save_to_disk(tmp_path / "lmms-lab_DocVQA")
    s = evaluate_docvqa(model, Scripted(processor, ["paris", "abcd", "42", "blue"]), str(tmp_path / "lmms-lab_DocVQA"),
                        tmp_path / "out", batch_size=4, max_new_tokens=3)
    assert s["anls"] == 1.0 and s["questions"] == 4


# ----------------------------------------------------------------------------------------
# ChartQA
# ----------------------------------------------------------------------------------------
def test_chartqa_release_folder_through_the_cli_is_recomputable(tiny, tmp_path):
    _, _, model_dir = tiny
    root = chartqa_release(tmp_path)
    for data in (root, root / "test"):
        out = tmp_path / f"out_{data.name.replace(' ', '_')}"
        assert cli(["eval", "chartqa", "--model", str(model_dir), "--data", str(data), "--output-dir", str(out),
                    "--batch-size", "2", "--max-new-tokens", "3"]) == 0
        rows = read_rows(out / "predictions.jsonl")
        assert sorted(r["id"] for r in rows) == ["augmented/0", "augmented/1", "human/0", "human/1", "human/2"]
        assert {r["id"]: r["answers"] for r in rows}["human/1"] == ["Yes"]
        scores = json.loads((out / "summary.json").read_text())["scores"]
        assert scores == accuracy_by_subset(rows)
        assert scores["human"]["questions"] == 3 and scores["augmented"]["questions"] == 2
        assert scores["overall"]["correct"] == sum(relaxed_accuracy(r["prediction"], r["answers"][0]) for r in rows)


def test_chartqa_release_file_scores_by_hand(tiny, tmp_path):
    model, processor, _ = tiny
    root = chartqa_release(tmp_path)
    # human: "104" vs 100 ok (4 %), "Yes." vs Yes wrong, "paris" ok; augmented: "45%" vs 45 wrong, "1995." ok
    s = evaluate_chartqa(model, Scripted(processor, ["104", "Yes.", "paris", "45%", "1995."]),
                         [(str(root / "test"), None)], tmp_path / "out", batch_size=5, max_new_tokens=3)
    assert s["scores"]["human"]["correct"] == 2 and s["scores"]["augmented"]["correct"] == 1


def test_chartqa_hub_layout_saved_to_disk(tiny, tmp_path):
    """HuggingFaceM4/ChartQA: image, query, label (a list), human_or_machine (ClassLabel human / machine)."""
    import datasets

    model, processor, _ = tiny
    feats = datasets.Features({"image": datasets.Image(), "query": datasets.Value("string"),
                               "label": datasets.Sequence(datasets.Value("string")),
                               "human_or_machine": datasets.ClassLabel(names=["human", "machine"])})
    ds = datasets.Dataset.from_dict({"image": [page(i) for i in range(4)], "query": [f"q{i}?" for i in range(4)],
                                     "label": [["100"], ["yes"], ["45"], ["Paris"]],
                                     "human_or_machine": [0, 0, 1, 1]}, features=feats)
    datasets.DatasetDict({"test": ds}).save_to_disk(tmp_path / "HuggingFaceM4_ChartQA")
    s = evaluate_chartqa(model, Scripted(processor, ["100", "no", "44", "paris"]),
                         [(str(tmp_path / "HuggingFaceM4_ChartQA"), None)], tmp_path / "out", batch_size=4,
                         max_new_tokens=3)
    # human: 100 ok, no != yes; machine -> augmented: 44 vs 45 (2.2 %) ok, paris ok
    assert s["scores"]["human"] == {"accuracy": 0.5, "correct": 1, "questions": 2}
    assert s["scores"]["augmented"] == {"accuracy": 1.0, "correct": 2, "questions": 2}


# ----------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------
def test_unknown_layouts_list_what_is_accepted(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    (tmp_path / "other.json").write_text(json.dumps({"questions": []}))
    for task, data in (("docvqa", tmp_path / "notes"), ("chartqa", tmp_path / "other.json")):
        assert cli(["eval", task, "--model", "tiny", "--data", str(data), "--output-dir", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert str(data) in err and "none of the accepted layouts" in err
        assert "val_v1.0.json" in err and "imgname" in err and "save_to_disk" in err and "JSONL" in err


def test_official_layout_images_stay_inside_the_data_root(tiny, tmp_path, capsys):
    _, _, model_dir = tiny
    ann = docvqa_release(tmp_path / "data")
    page(9).save(tmp_path / "outside.png")
    obj = json.loads(ann.read_text())
    obj["data"][0]["image"] = "../../outside.png"
    ann.write_text(json.dumps(obj))
    out = tmp_path / "out"
    # not allowed: the record is skipped and listed (with --strict: the error), naming the record and the flag
    assert cli(["eval", "docvqa", "--model", str(model_dir), "--data", str(ann), "--output-dir", str(out),
                "--max-new-tokens", "2", "--strict"]) == 2
    err = capsys.readouterr().err
    assert f"{ann} question 1" in err and "outside the data root" in err and "--allow-outside-root" in err
    assert cli(["eval", "docvqa", "--model", str(model_dir), "--data", str(ann), "--output-dir", str(out),
                "--max-new-tokens", "2", "--allow-outside-root"]) == 0
    assert len(read_rows(out / "predictions.jsonl")) == 4


def test_official_layout_records_with_unusable_image_paths_are_skipped_and_listed(tiny, tmp_path):
    """A NUL in an image path and a symlink loop are per-record skips named ``FILE question N`` (N from 1)."""
    _, _, model_dir = tiny
    ann = docvqa_release(tmp_path / "data")
    docs = ann.parent / "documents"
    (docs / "loop1.png").symlink_to(docs / "loop2.png")
    (docs / "loop2.png").symlink_to(docs / "loop1.png")
    obj = json.loads(ann.read_text())
    obj["data"][1]["image"] = "documents/doc\u0000.png"
    obj["data"][2]["image"] = "documents/loop1.png"
    ann.write_text(json.dumps(obj))
    out = tmp_path / "out"
    assert cli(["eval", "docvqa", "--model", str(model_dir), "--data", str(ann), "--output-dir", str(out),
                "--max-new-tokens", "2"]) == 0
    skipped = json.loads((out / "summary.json").read_text())["skipped"]
    assert [e["source"] for e in skipped] == [f"{ann} question 2", f"{ann} question 3"]
    assert "NUL" in skipped[0]["reason"] and "symlink loop" in skipped[1]["reason"]
    assert len(read_rows(out / "predictions.jsonl")) == 2
