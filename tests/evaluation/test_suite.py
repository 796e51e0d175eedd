"""Several tasks scored side by side (evaluation/suite.py) through `python -m jaxfin.evaluate --task`: per-task
folders, the summary table, --data in a task's own format, predictions matched by id."""

import json
import os

import pytest

from jaxfin import evaluate, tasks
from jaxfin.errors import UserError
from jaxfin.evaluation import suite


def _write_predictions(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def test_cli_predictions_several_tasks_write_per_task_and_summary(tmp_path):
    preds = tmp_path / "preds"
    preds.mkdir()
    fiqasa = tasks.get("fiqasa").read(tasks.get("fiqasa").files["test"])
    headlines = tasks.get("headlines").read(tasks.get("headlines").files["test"])
    # fiqasa: gold answers, reversed (ids, not order, match them); headlines: "Yes." everywhere, which is "no"
    _write_predictions(preds / "fiqasa.jsonl", [{"id": ex["id"], "completion": ex["label"]} for ex in fiqasa[::-1]])
    _write_predictions(preds / "headlines.jsonl", [{"id": ex["id"], "completion": "Yes."} for ex in headlines])
    out = tmp_path / "out"
    assert evaluate.main(["--task", "fiqasa,headlines", "--predictions", str(preds), "--out", str(out)]) == 0
    for name, n in (("fiqasa", 235), ("headlines", len(headlines))):
        m = json.loads((out / name / "metrics.json").read_text())
        assert m["n_examples"] == n and m["overlength_rate"] == 0.0 and f"{m['primary']}_ci95" in m
        assert {"predictions.jsonl", "report.md"} <= set(os.listdir(out / name))
    summary = json.loads((out / "summary.json").read_text())["tasks"]
    assert [(r["task"], r["metric"]) for r in summary] == [("fiqasa", "f1"), ("headlines", "avg_f1")]
    assert summary[0]["value"] == 1.0
    # all "no": per question type the weighted F1 is share_no * 1 (F1 of "no" = 2p/(p+1) with p its precision,
    # weighted by its support) -- far below 1 and the same as predicting "No" outright
    all_no = tasks.get("headlines").score(headlines, ["No"] * len(headlines))["avg_f1"]
    assert summary[1]["value"] == pytest.approx(all_no) and all_no < 0.8
    md = (out / "summary.md").read_text()
    assert "| fiqasa | F1 | 1.0000 |" in md and "| headlines | avg F1 |" in md


def test_cli_data_replaces_one_tasks_split(tmp_path):
    data = tmp_path / "fpb.jsonl"
    rows = [{"id": f"x{i}", "text": t, "label": lab, "query": f"Sentiment?\n{t}"}
            for i, (t, lab) in enumerate([("Sales rose .", "positive"), ("Loss widened .", "negative"),
                                          ("Meeting held .", "neutral")])]
    _write_predictions(data, rows)
    pred = tmp_path / "p.jsonl"
    # "positive or negative": the first label in fpb's order (negative, positive, neutral) wins
    _write_predictions(pred, [{"id": "x0", "completion": "<think>negative?</think> Positive."},
                              {"id": "x1", "completion": "positive or negative"},
                              {"id": "x2", "completion": ""}])
    out = tmp_path / "out"
    assert evaluate.main(["--task", "fpb", "--data", str(data), "--predictions", str(pred), "--out", str(out)]) == 0
    m = json.loads((out / "fpb" / "metrics.json").read_text())
    assert (m["n_examples"], m["acc"], m["missing_rate"]) == (3, pytest.approx(2 / 3), pytest.approx(1 / 3))
    with pytest.raises(UserError, match="--data replaces the data of one task"):
        evaluate.main(["--task", "fpb,fiqasa", "--data", str(data), "--predictions", str(pred), "--out", str(out)])
    with pytest.raises(UserError, match="unknown task 'fbp'"):
        evaluate.main(["--task", "fbp", "--predictions", str(pred), "--out", str(out)])
    with pytest.raises(UserError, match="ids do not match"):
        evaluate.main(["--task", "fiqasa", "--predictions", str(pred), "--out", str(out)])


def test_summary_markdown_with_baseline():
    m = {"primary": "f1", "f1": 0.5, "f1_ci95": [0.4, 0.6], "n_examples": 10, "overlength_rate": 0.1}
    rows = suite.summary_rows({"fpb": m}, {"fpb": {**m, "f1": 0.25, "f1_ci95": [0.2, 0.3]}})
    md = suite.summary_markdown(rows)
    assert "| fpb | F1 | 0.5000 | 0.4000-0.6000 | 0.2500 | 0.2000-0.3000 | 10 | 10.00% |" in md
