"""jaxfin.distill on the tiny model with scripted completions: extraction, vote and the output files exactly; the
same settings give identical files; a crashed run resumes to the same files; no agreement; config errors."""

import json
import os
import re

import pytest

from jaxfin import distill as cli
from jaxfin.data import pairs as pairs_lib
from jaxfin.errors import UserError, run_cli
from jaxfin.infer.decode import Completion
from jaxfin.io import store
from jaxfin.recipes import distill
from jaxfin.tasks import sentiment
from jaxfin.training import defaults

QUERY = "What is the sentiment of this financial post: Positive, Negative, or Neutral?\nText: {}\nAnswer:"
ROWS = [("p0", "Shares jump after earnings beat", "Positive"),
        ("p1", "Company cuts guidance again", "Negative"),
        ("p2", "Board meets on Tuesday", "Neutral"),
        ("p3", "Results in line with forecasts", "Positive")]  # the vote will say neutral: a wrong pseudo-label
# Per prompt: (text, finish_reason) of each of the 4 samples, in sample order.
SCRIPT = [
    [("Beats are good. Answer: Positive", "stop"), ("Answer: **positive**", "stop"),
     ("Answer: negative", "stop"), ("blah", "stop")],                    # 2/4 positive; rejected: unparseable
    [("Answer: Negative", "stop"), ("Answer: negative.", "stop"), ("Answer: Negative", "stop"),
     ("Guidance cut, so it is negative and", "length")],                 # 4/4 (the parser reads the cut one)
    [("Answer: positive", "stop"), ("Answer: neutral", "stop"), ("Answer: negative", "stop"), ("", "stop")],
    [("<think>Answer: positive</think>Answer: Neutral", "stop"), ("Answer: neutral", "stop"),
     ("Answer: Neutral", "stop"), ("Answer: Positive", "stop")],          # 3/4 neutral; rejected: minority
]


@pytest.fixture(scope="module")
def model(assets):
    return store.load(assets.model)


@pytest.fixture(scope="module")
def tokenizer(model):
    return model.tokenizer()


def _prompts_file(tmp_path) -> str:
    path = os.path.join(tmp_path, "prompts.jsonl")
    with open(path, "w") as f:
        for i, text, label in ROWS:
            f.write(json.dumps({"id": i, "text": text, "label": label, "query": QUERY.format(text)}) + "\n")
    return path


def _config(assets, wd, prompts, **distill_keys):
    c = defaults.distill()
    c.workdir, c.model.path = str(wd), assets.model
    c.distill.task, c.distill.prompts, c.distill.num_samples, c.distill.min_agreement = "fiqasa", prompts, 4, 0.5
    c.sampling.batch_size = 4  # 4 // 4 samples = one prompt per sampler call (and per append)
    for k, v in distill_keys.items():
        c.distill[k] = v
    return c


def scripted(tokenizer, calls=None, fail_at=None):
    def sample(prompts, example_ids):
        if calls is not None:
            calls.append(list(example_ids))
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt("killed")
        for p in prompts:  # the task prompt with the instruction, through the chat template
            assert "Answer: <label>" in tokenizer.decode(p) and "positive, negative, neutral" in tokenizer.decode(p)
        return [[Completion(tokenizer.encode(t, add_special_tokens=False), r) for t, r in SCRIPT[i]]
                for i in example_ids]
    return sample


def _read(wd, name):
    with open(os.path.join(wd, name)) as f:
        return f.read()


def _jsonl(wd, name):
    return [json.loads(line) for line in _read(wd, name).splitlines()]


def test_files_exactly(assets, model, tokenizer, tmp_path):
    prompts = _prompts_file(tmp_path)
    wd = tmp_path / "run"
    stats = distill.run(_config(assets, wd, prompts), sampler=scripted(tokenizer), model=model)

    samples = _jsonl(wd, "samples.jsonl")
    assert [(s["id"], s["sample"]) for s in samples] == [(f"p{i}", k) for i in range(4) for k in range(4)]
    assert [s["text"] for s in samples] == [t for script in SCRIPT for t, _ in script]
    assert [s["extracted"] for s in samples] == [
        "positive", "positive", "negative", None,
        "negative", "negative", "negative", "negative",
        "positive", "neutral", "negative", None,
        "neutral", "neutral", "neutral", "positive"]
    assert [s["finish_reason"] for s in samples][4:8] == ["stop", "stop", "stop", "length"]
    s7 = samples[7]
    assert s7["token_ids"] == tokenizer.encode(SCRIPT[1][3][0], add_special_tokens=False)  # cut off: no EOS
    assert samples[3]["token_ids"] == tokenizer.encode("blah", add_special_tokens=False) + [model.eos_ids[0]]

    sft = _jsonl(wd, "sft.jsonl")
    assert sft == [{"id": "p0", "text": ROWS[0][1], "label": "Positive", "query": QUERY.format(ROWS[0][1])},
                   {"id": "p1", "text": ROWS[1][1], "label": "Negative", "query": QUERY.format(ROWS[1][1])},
                   {"id": "p3", "text": ROWS[3][1], "label": "Neutral", "query": QUERY.format(ROWS[3][1])}]
    assert [ex["label"] for ex in sentiment.read_fiqasa(str(wd / "sft.jsonl"))] == ["Positive", "Negative", "Neutral"]

    pairs = _jsonl(wd, "pairs.jsonl")
    assert [(p["id"], p["chosen"], p["rejected"], p["rejected_reason"], p["rejected_sample"]) for p in pairs] == [
        ("p0", "Positive", "blah", "unparseable", 3),
        ("p1", "Negative", SCRIPT[1][3][0], "length", 3),
        ("p3", "Neutral", "Answer: Positive", "minority", 3)]
    assert pairs[0]["prompt"] == [{"role": "user", "content": QUERY.format(ROWS[0][1])}]  # the plain task prompt
    assert [p["rejected_ids"] for p in pairs] == [samples[3]["token_ids"], s7["token_ids"], samples[15]["token_ids"]]
    assert [p["id"] for p in pairs_lib.read_pairs(str(wd / "pairs.jsonl"))] == ["p0", "p1", "p3"]

    assert stats == json.loads(_read(wd, "stats.json"))
    assert stats["n_questions"] == 4 and stats["n_kept"] == 3 and stats["kept_fraction"] == 0.75
    assert stats["parse_rate"] == 14 / 16
    assert stats["agreement_histogram"]["counts"] == [0, 0, 1, 0, 0, 1, 0, 1, 0, 1]  # 0.25, 0.5, 0.75, 1.0
    assert stats["label_distribution"] == {"negative": 1 / 3, "neutral": 1 / 3, "positive": 1 / 3}
    assert stats["pseudo_label_accuracy"] == 2 / 3  # p3's voted neutral is wrong
    assert stats["n_pairs"] == 3 and stats["rejected_reasons"] == {"length": 1, "unparseable": 1, "minority": 1}


def test_same_settings_identical_files_and_resume(assets, model, tokenizer, tmp_path):
    prompts = _prompts_file(tmp_path)
    names = ("samples.jsonl", "sft.jsonl", "pairs.jsonl", "stats.json")
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    distill.run(_config(assets, a, prompts), sampler=scripted(tokenizer), model=model)
    distill.run(_config(assets, b, prompts), sampler=scripted(tokenizer), model=model)
    assert all(_read(a, n) == _read(b, n) for n in names)

    calls = []
    with pytest.raises(KeyboardInterrupt):  # killed during the 3rd prompt's sampling
        distill.run(_config(assets, c, prompts), sampler=scripted(tokenizer, calls, fail_at=3), model=model)
    assert [r["id"] for r in _jsonl(c, "samples.jsonl")] == ["p0"] * 4 + ["p1"] * 4
    with open(c / "samples.jsonl", "a") as f:  # and a line cut short by the kill
        f.write('{"id": "p2", "sample": 0, "te')
    calls = []
    distill.run(_config(assets, c, prompts), sampler=scripted(tokenizer, calls), model=model)
    assert calls == [[2], [3]]  # only what was missing
    assert all(_read(a, n) == _read(c, n) for n in names)

    calls = []  # a rerun with another vote threshold samples nothing and rewrites the outputs
    stats = distill.run(_config(assets, c, prompts, min_agreement=0.75), sampler=scripted(tokenizer, calls), model=model)
    assert calls == [] and stats["n_kept"] == 2 and len(_jsonl(c, "sft.jsonl")) == 2
    with pytest.raises(UserError, match="other settings: num_samples=4 \\(now 2\\)"):
        distill.run(_config(assets, c, prompts, num_samples=2), sampler=scripted(tokenizer), model=model)


def test_no_agreement_writes_empty_files_warns_and_exits_0(assets, tokenizer, tmp_path, monkeypatch, capsys):
    prompts = _prompts_file(tmp_path)
    monkeypatch.setattr(distill, "model_sampler", lambda model, config, how: scripted(tokenizer))
    wd = tmp_path / "none"
    argv = ["--config.model.path", assets.model, "--config.workdir", str(wd), "--config.distill.prompts", prompts,
            "--config.distill.num_samples=4", "--config.distill.min_agreement=1.0", "--config.distill.max_examples=1"]
    with pytest.raises(SystemExit) as e:
        run_cli(cli.main, argv)
    assert e.value.code == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: distill: no prompt reached distill.min_agreement=1.0")
    assert _read(wd, "sft.jsonl") == "" and _read(wd, "pairs.jsonl") == ""
    assert json.loads(_read(wd, "stats.json"))["n_kept"] == 0 and len(_jsonl(wd, "samples.jsonl")) == 4


@pytest.mark.parametrize("argv, message", [
    (["--config.distill.task=fire"], "fire's answers are not single labels"),
    (["--config.distill.task=nope"], "unknown task"),
    (["--config.distill.min_agreement=1.5"], "must be in \\[0, 1\\]"),
    (["--config.sampling.top_p=0"], "top_p must be in"),
    (["--config.distill.answer_regex=("], "not a regular expression"),
    (["extra"], "unexpected argument 'extra'"),
])
def test_errors_are_one_line_exit_2(assets, tmp_path, capsys, argv, message):
    base = ["--config.model.path", assets.model, "--config.workdir", str(tmp_path / "w")]
    with pytest.raises(SystemExit) as e:
        run_cli(cli.main, base + argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert re.search(message, err[0]), err[0]


@pytest.mark.filterwarnings("ignore:distill. no prompt reached")  # the random tiny model answers no label
def test_real_sampler_same_seed_same_files(assets, model, tmp_path):
    """decode.generate wired in: the same seed gives byte-identical files."""
    prompts = _prompts_file(tmp_path)
    for wd in ("a", "b"):
        c = _config(assets, tmp_path / wd, prompts, num_samples=2, max_examples=1, min_agreement=0.0)
        c.sampling.temperature, c.sampling.top_p, c.sampling.max_new_tokens = 1.0, 1.0, 6
        distill.run(c, model=model)
    for name in ("samples.jsonl", "sft.jsonl", "pairs.jsonl", "stats.json"):
        assert _read(tmp_path / "a", name) == _read(tmp_path / "b", name)
    rows = _jsonl(tmp_path / "a", "samples.jsonl")
    assert len(rows) == 2 and all(1 <= len(r["token_ids"]) <= 7 for r in rows)
    assert rows[0]["token_ids"] != rows[1]["token_ids"]  # two different samples of one prompt
