"""The fire task (tasks/fire.py) through the evaluation runner (evaluation/predict.py): metrics on a hand-built set
with known answers, seqeval placement, bootstrap, and the jaxfin.evaluate CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxfin import errors, evaluate
from jaxfin.data import chat
from jaxfin.errors import UserError
from jaxfin.evaluation import metrics, predict
from jaxfin.infer import decode
from jaxfin.io import store
from jaxfin.tasks import fire, ner
from jaxfin.tasks.base import data_path


DEV = data_path("fire_financial_ner",
                   "fire_dev_7types.jsonl")
TYPES = ["Company", "Date", "Money", "Person"]


def ents(**kw):
    return {t: kw.get(t) for t in TYPES}


# Each example exercises one rule; the expected counts are worked out in the comments.
GOLD = [
    # whitespace variant, NFKC (fullwidth G in the text), a gold duplicate after normalisation; TP 3, FN 1 (Money)
    {"id": "a", "text": "Apple Inc. sued \uff27oogle in March 2020 for $5 million .",
     "entities": ents(Company=["Apple Inc.", "Google", "Apple  Inc."], Date=["March 2020"], Money=["$5 million"])},
    # case is kept: "Apple" != "apple" (FP + FN); Person has no gold anywhere (support 0, FP 1)
    {"id": "b", "text": "Tim Cook met apple staff .", "entities": ents(Company=["apple"])},
    # empty gold: every prediction is a FP
    {"id": "c", "text": "Nothing here .", "entities": ents()},
    # wrong type: Amazon predicted as Money -> FP Money + FN Company
    {"id": "d", "text": "Amazon paid $3 .", "entities": ents(Company=["Amazon"], Money=["$3"])},
    # parse failure (truncated, stopped at max_new_tokens): FN 1
    {"id": "e", "text": "IBM rose .", "entities": ents(Company=["IBM"])},
]
PRED_A = {"Company": ["Apple \n Inc.", "\uff27oogle", "Apple Inc."], "Date": "March 2020", "Money": None,
          "Location": ["Cupertino"]}  # extra type Location: FP, not a per-type row
COMPLETIONS = {
    "a": "reasoning...</think>\n\n```json\n" + json.dumps(PRED_A, ensure_ascii=False) + "\n```",
    "b": '{"Company": ["Apple"], "Person": ["Tim Cook"]}',
    "c": "<think>none?</think>\n\n" + '{"Date": ["here"]}',
    "d": '{"Money": ["Amazon", "$3"], "Company": []}',
    "e": '{"Company": ["IB',
}


def _score(gold, preds, types=None):
    """The fire task's metrics for prediction dicts {"entities", "finish_reason"?} through the runner."""
    task = fire.task(types or ner.entity_types(gold))
    return predict.score(task, gold, [{"completion": p.get("completion"), "finish_reason": p.get("finish_reason"),
                                       "prediction": p.get("entities")} for p in preds])


METRIC_KEYS = (*fire.METRIC_KEYS, "primary", "overlength_rate")


def predictions():
    return [{"completion": COMPLETIONS[ex["id"]], "entities": fire.parse_completion(COMPLETIONS[ex["id"]]),
             "finish_reason": "length" if ex["id"] == "e" else "stop"} for ex in GOLD]


def test_hand_built_metrics():
    m = _score(GOLD, predictions())[0]
    assert list(m) == list(METRIC_KEYS) and m["n_examples"] == 5
    # TP 4 (a: 3, d: 1), FP 5 (a: Location, b: Apple + Tim Cook, c: here, d: Amazon), FN 4 (a, b, d, e)
    assert m["micro_precision"] == pytest.approx(4 / 9) and m["micro_recall"] == pytest.approx(4 / 8)
    assert m["micro_f1"] == pytest.approx(8 / 17)
    pt = m["per_type"]
    assert list(pt) == TYPES  # the extra predicted type is a FP, never a row
    assert pt["Company"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 5, "f1": 0.5, "support": 5})
    assert pt["Date"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert pt["Money"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert pt["Person"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)  # Person (support 0) left out
    assert m["parse_failure_rate"] == pytest.approx(0.2) and m["overlength_rate"] == pytest.approx(0.2)
    # seqeval: gold 8 located entities, 7 predicted (Cupertino and "Apple" have no occurrence), TP 4
    s = m["seqeval"]
    assert s["micro_f1"] == pytest.approx(8 / 15)
    assert s["per_type"]["Company"] == pytest.approx({"precision": 1.0, "recall": 0.4, "f1": 4 / 7, "support": 5})
    assert s["per_type"]["Person"]["support"] == 0 and "Location" not in s["per_type"]
    assert s["macro_f1"] == pytest.approx((4 / 7 + 2 / 3 + 0.5 + 0.0) / 4)  # seqeval's macro: every seen label
    lo, hi = m["micro_f1_ci95"]
    assert 0.0 <= lo <= m["micro_f1"] <= hi <= 1.0


def test_prediction_rows_list_errors_per_example():
    rows = {r["id"]: r for r in _score(GOLD, predictions())[1]}
    assert rows["a"]["fp"] == [["Location", "Cupertino"]] and rows["a"]["fn"] == [["Money", "$5 million"]]
    assert rows["a"]["entities"]["Date"] == ["March 2020"]  # single string -> list
    assert rows["d"]["fp"] == [["Money", "Amazon"]] and rows["d"]["fn"] == [["Company", "Amazon"]]
    assert rows["e"]["entities"] is None and rows["e"]["fn"] == [["Company", "IBM"]]
    assert rows["e"]["finish_reason"] == "length" and rows["e"]["completion"] == COMPLETIONS["e"]
    # seqeval cannot see these: no occurrence in the text (Cupertino), or only in another case (Apple)
    assert rows["a"]["unplaced_pred"] == [["Location", "Cupertino"]]
    assert rows["b"]["unplaced_pred"] == [["Company", "Apple"]]
    assert all(r["unplaced_gold"] == [] for r in rows.values())


def test_perfect_predictions_score_one_everywhere():
    gold = ner.load_examples(DEV)
    m = _score(gold, [{"entities": ex["entities"], "finish_reason": "stop"} for ex in gold])[0]
    assert m["micro_f1"] == m["micro_precision"] == m["micro_recall"] == m["macro_f1"] == 1.0
    assert m["micro_f1_ci95"] == [1.0, 1.0]
    assert all(v["f1"] == 1.0 and v["support"] > 0 for v in m["per_type"].values())
    assert m["seqeval"]["micro_f1"] == m["seqeval"]["macro_f1"] == 1.0
    assert all(v["f1"] == 1.0 for v in m["seqeval"]["per_type"].values())
    assert m["parse_failure_rate"] == m["overlength_rate"] == 0.0


def test_no_entities_at_all_scores_zero_not_nan():
    gold = [{"id": "x", "text": "nothing", "entities": {"Company": None}}]
    m = _score(gold, [{"entities": {}}])[0]
    assert m["micro_f1"] == m["macro_f1"] == m["seqeval"]["micro_f1"] == m["seqeval"]["macro_f1"] == 0.0


def test_iob2_placement_longer_first_every_occurrence_no_overlap():
    tags, unplaced = fire.iob2_tags("A B C A B".split(), {("X", "A B"), ("Y", "B C"), ("Z", "A")})
    assert tags == ["B-X", "I-X", "O", "B-X", "I-X"]
    assert sorted(unplaced) == [("Y", "B C"), ("Z", "A")]


def test_bootstrap_brackets_the_estimate_and_is_reproducible():
    gold = ner.load_examples(DEV)
    preds = [{"entities": {t: [m for j, m in enumerate(v or ()) if (i + j) % 3] for t, v in ex["entities"].items()}}
             for i, ex in enumerate(gold)]
    m = _score(gold, preds)[0]
    lo, hi = m["micro_f1_ci95"]
    assert lo < m["micro_f1"] < hi and hi - lo < 0.1
    # a test set too large for one [resamples, N] index array goes through the chunked path
    rng = np.random.default_rng(1)
    tp, fp, fn = rng.integers(0, 4, (3, 20_000))
    lo, hi = metrics.bootstrap_f1(tp, fp, fn)
    point = metrics.prf(tp.sum(), fp.sum(), fn.sum())[2]
    assert lo < point < hi and hi - lo < 0.02 and [lo, hi] == metrics.bootstrap_f1(tp, fp, fn)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "jaxfin.evaluate", *args], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_predictions_cli_end_to_end(tmp_path):
    gold = write_jsonl(tmp_path / "gold.jsonl", GOLD)
    lines = [{"id": ex["id"], "completion": COMPLETIONS[ex["id"]]} for ex in GOLD if ex["id"] != "b"]
    lines.insert(1, {"id": "b", "entities": {"Company": ["Apple"], "Person": "Tim Cook"}})  # parsed elsewhere
    lines[-1]["finish_reason"] = "length"
    out = tmp_path / "out"
    proc = run_cli("--predictions", write_jsonl(tmp_path / "pred.jsonl", lines), "--data", gold, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "micro F1 0.4706" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == list(METRIC_KEYS)
    assert metrics["micro_f1"] == pytest.approx(8 / 17) and metrics["overlength_rate"] == pytest.approx(0.2)
    assert set(metrics["per_type"]["Company"]) == {"precision", "recall", "f1", "support"}
    assert set(metrics["seqeval"]) == {"micro_f1", "macro_f1", "per_type"}
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [ex["id"] for ex in GOLD]
    assert {"id", "completion", "entities", "fp", "fn"} <= set(rows[0])
    report = (out / "report.md").read_text()
    assert f"]({fire.CHART})" in report and "| Company | 5 |" in report
    assert "0 gold and 2 predicted mentions had no free occurrence" in report
    assert (out / fire.CHART).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in os.listdir(out) if ".tmp-" in p]
    # our own predictions.jsonl scores the same when fed back
    again = tmp_path / "again"
    assert evaluate.main(["--predictions", str(out / "predictions.jsonl"), "--data", gold, "--out", str(again)]) == 0
    assert json.loads((again / "metrics.json").read_text()) == metrics


def test_predictions_cli_id_mismatch_is_one_line(tmp_path):
    gold = write_jsonl(tmp_path / "gold.jsonl", GOLD)
    lines = [{"id": ex["id"], "completion": "{}"} for ex in GOLD[:3]] + [{"id": "zz", "completion": "{}"}]
    proc = run_cli("--predictions", write_jsonl(tmp_path / "p.jsonl", lines), "--data", gold, "--out",
                   str(tmp_path / "o"))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert "1 not in the gold data (first 'zz'), 2 gold ids without a prediction (first 'd')" in proc.stderr


@pytest.mark.parametrize("line,message", [
    ({"completion": "{}"}, r"p.jsonl:1: no 'id' field"),
    ({"id": "a"}, r"p.jsonl:1: needs 'completion'"),
    ({"id": "a", "entities": ["Apple"]}, r"p.jsonl:1: 'entities' must be"),
])
def test_bad_prediction_lines(tmp_path, line, message):
    with pytest.raises(UserError, match=message):
        predict.read_predictions(write_jsonl(tmp_path / "p.jsonl", [line]), fire.task(TYPES), GOLD)


def test_max_examples_needs_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        errors.run_cli(evaluate.main, ["--predictions", "p", "--data", "g", "--out", "o", "--max-examples", "3"])
    assert e.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: --max-examples takes K >= 1 and only applies with --model (see python -m jaxfin.evaluate --help)"]


@pytest.fixture(scope="module")
def tiny(assets):
    """The tiny assets (conftest) with their model loaded by store.load, exactly as the CLI loads it."""
    return assets, store.load(assets.model)


def test_evaluate_model_wires_prompts_decoder_and_parser(tiny):
    """Completions equal decode.greedy on the same chat-template prompts, decoded with the think tags kept."""
    assets, model = tiny
    tok, examples = model.tokenizer(), ner.load_examples(assets.eval)[:3]
    types = ner.entity_types(examples)
    preds = predict.generate(model, fire.task(types), examples, max_new_tokens=6, batch_size=2)
    prompts = [chat.prompt_ids(tok, fire.prompt_messages(*fire.to_triple(ex, types)[:2])) for ex in examples]
    assert tok.decode(prompts[0]).endswith("<｜Assistant｜><think>\n")
    direct = decode.greedy(model.params, model.cfg, prompts, max_new_tokens=6, stop_ids=model.eos_ids, batch_size=2)
    assert [p["completion"] for p in preds] == [tok.decode(c.token_ids, skip_special_tokens=False) for c in direct]
    assert [p["finish_reason"] for p in preds] == [c.finish_reason for c in direct]
        # the training target (data.py's think policy) parses back to exactly the target JSON
    instruction, text, output = fire.to_triple(examples[0], types)
    target = chat.target_text(tok, fire.prompt_messages(instruction, text), output)
    assert target.startswith("</think>\n\n") and fire.parse_completion(target) == json.loads(output)


def test_model_cli_path(tiny, tmp_path):
    """--model PATH with --max-examples: generate, then score, on the tiny HF model directory."""
    assets, _ = tiny
    out = tmp_path / "out"
    assert evaluate.main(["--model", assets.model, "--data", assets.eval, "--out", str(out), "--max-examples", "3",
                          "--max-new-tokens", "6", "--batch-size", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    gold = ner.load_examples(assets.eval)
    assert metrics["n_examples"] == 3 and list(metrics["per_type"]) == ner.entity_types(gold)
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [ex["id"] for ex in gold[:3]]
    assert all(r["finish_reason"] in ("stop", "length") for r in rows)
    assert f"- model: `{assets.model}`" in (out / "report.md").read_text()


# --------------------------------------------------------------------------------------------------------------
# Issue 16: seqeval tokens split edge punctuation (FIRE unchanged), n/a for a type with nothing placeable, and a
# warning when evaluation data name other entity types than the model was trained on.


def test_seqeval_places_a_mention_before_a_full_stop():
    assert fire.seqeval_tokens('Revenue rose in fiscal 2024. ("U.S." sales)') == \
        ["Revenue", "rose", "in", "fiscal", "2024", ".", "(", '"', "U.S", ".", '"', "sales", ")"]
    gold = [{"id": "1", "text": "Revenue rose in fiscal 2024.", "entities": {"Date": ["fiscal 2024"]}}]
    m, rows = _score(gold, [{"entities": {"Date": ["fiscal 2024"]}}])
    assert rows[0]["unplaced_gold"] == [] and m["seqeval"]["per_type"]["Date"]["support"] == 1
    assert m["seqeval"]["micro_f1"] == 1.0


def test_fire_dev_seqeval_is_unchanged_by_the_tokeniser(monkeypatch):
    """FIRE's text is already tokenised with punctuation apart: splitting edge punctuation changes no score."""
    gold = ner.load_examples(DEV)
    rng = np.random.default_rng(0)
    preds = []
    for ex in gold:  # gold with mentions dropped, retyped or truncated to a word: a realistic mix
        p = {}
        for t, ms in ex["entities"].items():
            for mention in ms or ():
                r = rng.random()
                key = t if r < 0.7 else "Company" if r < 0.85 else t
                p.setdefault(key, []).append(mention.split()[0] if 0.85 <= r < 0.95 else mention)
        preds.append({"entities": p})
    new, new_rows = _score(gold, preds, fire.TYPES)
    monkeypatch.setattr(fire, "seqeval_tokens", lambda s: ner.normalize_mention(s).split())  # the old tokens
    old, old_rows = _score(gold, preds, fire.TYPES)
    assert new["seqeval"] == old["seqeval"] and new["seqeval"]["micro_f1"] > 0.5
    assert [r["unplaced_gold"] for r in new_rows] == [r["unplaced_gold"] for r in old_rows]


def test_a_type_with_nothing_placeable_reads_n_a():
    gold = [{"id": "1", "text": "Timothy Cook joined Apple .", "entities": {"Company": ["Apple"], "Person": ["Tim"]}}]
    m, rows = _score(gold, [{"entities": {"Company": ["Apple"], "Person": ["Tim"]}}])
    table = fire.report(m, rows)
    assert [line for line in table if line.startswith("| Person |")] == ["| Person | 1 | 1.0000 | 1.0000 | 1.0000 | n/a |"]
    assert [line for line in table if line.startswith("| Company |")][0].endswith("| 1.0000 |")


def test_other_entity_types_warn_once_with_counts():
    data = [{"id": "1", "text": "Acme hired Bob in Paris .",
             "entities": {"ORG": ["Acme"], "PER": ["Bob"], "LOC": ["Paris"], "Company": ["Acme"]}}]
    with pytest.warns(UserWarning) as caught:
        ner.warn_type_mismatch(["Company", "Person", "Location"], data, "--data eval.jsonl")
    assert [str(w.message) for w in caught] == [
        "--data eval.jsonl: 3 of its 4 entity types are not among the 3 the model was trained on (ORG, PER, LOC: 3 "
        "of 4 gold mentions, never asked for, count as misses); 2 trained types do not occur in it (Person, Location)"]


def _cli_lines(main, argv, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        errors.run_cli(main, argv)
    return e.value.code, capsys.readouterr().err.splitlines()


def test_type_mismatch_warns_in_evaluate_and_train(assets, tmp_path, capsys, monkeypatch):
    other = write_jsonl(tmp_path / "eval.jsonl", [{"id": "1", "text": "Acme rose .", "entities": {"ORG": ["Acme"]}}])
    trained = ner.entity_types(ner.load_examples(assets.train))
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "run.json").write_text(json.dumps({"config": {"entity_types": trained}}))  # not loadable: stops after
    code, lines = _cli_lines(evaluate.main, ["--model", str(wd), "--data", other, "--out", str(tmp_path / "o")],
                             capsys)
    warning = (f"warning: --data {other}: 1 of its 1 entity types are not among the {len(trained)} the model was "
               f"trained on (ORG: 1 of 1 gold mentions, never asked for, count as misses); {len(trained)} trained "
               f"types do not occur in it ({', '.join(trained)})")
    assert code == 2 and lines[0] == warning and lines[1].startswith("error: ") and len(lines) == 2, lines
    from jaxfin import train
    from jaxfin.training import session

    def stop(*args, **kwargs):
        raise UserError("stopped before the model")
    monkeypatch.setattr(session, "check_base", stop)
    argv = [f"--config.workdir={tmp_path / 'run'}", f"--config.model.path={assets.model}",
            f"--config.data.train={assets.train}", f"--config.data.eval={other}"]
    code, lines = _cli_lines(train.main, argv, capsys)  # the embedded tiny config with these paths
    assert code == 2 and lines == [warning.replace(f"--data {other}", f"data.eval={other}"),
                                   "error: stopped before the model"], lines
