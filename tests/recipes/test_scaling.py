"""jaxfin.scaling: --fit-only on exact power-law points, data.train_subset nested and deterministic, one tiny
end-to-end run (finished points reused on a rerun), and one-line errors for bad arguments. The fit itself is
tested in test_powerlaw.py."""

import json
import os
import re

import numpy as np
import pytest

from jaxfin import config_flags
from jaxfin import scaling as cli
from jaxfin.data import subset
from jaxfin.errors import UserError, run_cli
from jaxfin.recipes import scaling
from jaxfin.training import sft

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.py")


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(cli.main, argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err.strip().splitlines()


def test_fit_only_exact_power_law(tmp_path, capsys):
    d = np.array([40, 80, 160, 320, 40, 80])
    points = [{"n_examples": int(n), "f1": float(1 - 1.5 * n ** -0.28), "fraction": 0.1, "seed": i}
              for i, n in enumerate(d)]
    path = tmp_path / "points.json"
    path.write_text(json.dumps(points))
    code, out, err = _cli(["--fit-only", str(path), "--out", str(tmp_path / "fit")], capsys)
    assert code == 0, err
    fit = json.loads((tmp_path / "fit" / "fit.json").read_text())
    assert abs(fit["alpha"] - 0.28) < 1e-9 and abs(fit["log_A"] - np.log(1.5)) < 1e-9 and fit["r2"] > 1 - 1e-12
    assert fit["alpha_ci95_bootstrap"] is None and [p["seed"] for p in fit["points"]] == list(range(6))
    assert (tmp_path / "fit" / "fit.png").stat().st_size > 0 and "alpha = 0.2800" in out


def test_train_subset_nested_and_deterministic():
    items = [f"ex{i}" for i in range(40)]
    quarter, half, whole = (subset.select(items, f"{f}:3") for f in (0.25, 0.5, 1))
    assert quarter == half[:10] and half == whole[:20] and sorted(whole) == sorted(items)
    assert subset.select(items, "0.5:3") == half and subset.select(items, "0.5:4") != half
    assert subset.select(items, "") == items and subset.size(40, "0.125:0") == 5 == len(subset.select(items, "0.125:0"))
    for bad in ("0.5", "0:1", "1.5:0", "half:0", "0.5:-1"):
        with pytest.raises(UserError, match="data.train_subset"):
            subset.select(items, bad)


def _tiny_config(assets, tmp_path):
    train = tmp_path / "train.jsonl"
    with open(assets.train) as f:
        train.write_text("".join(f.readlines()[:16]))
    c = config_flags.load_config(TINY)
    c.model.path, c.data.train, c.data.eval = assets.model, str(train), assets.eval
    c.train.steps, c.train.epochs, c.train.seq_len, c.optim.warmup_steps = 0, 1, 256, 1
    c.eval.max_examples, c.eval.max_new_tokens, c.eval.batch_size = 2, 24, 2
    c.checkpoint.every_steps = 100
    c.lock()
    return c


def test_end_to_end_and_reuse(assets, tmp_path):
    """Two real trainings (seed 0 at fractions 0.5 and 1); seed 1's points are already finished (written here), so
    they are reused, and a rerun trains nothing."""
    calls = []

    def train(c):
        calls.append((c.workdir, c.seed, c.data.train_subset, c.eval.baseline))
        return sft.run(c)

    out = str(tmp_path / "out")
    for fraction, d, f1 in ((0.5, 8, 0.2), (1.0, 16, 0.5)):  # finished points of seed 1
        counts = [[1, 4, 3], [0, 1, 0]] if f1 == 0.2 else [[2, 1, 2], [0, 1, 0]]  # micro-F1 2/10 and 4/8
        point = {"fraction": fraction, "seed": 1, "n_examples": d, "f1": f1, "metric": "micro_f1",
                 "counts": counts, "average": "micro"}
        os.makedirs(scaling.point_dir(out, fraction, 1))
        with open(os.path.join(scaling.point_dir(out, fraction, 1), "point.json"), "w") as f:
            json.dump(point, f)
    config = _tiny_config(assets, tmp_path)
    fit = scaling.run(config, fractions=[0.5, 1.0], seeds=[0, 1], out=out, train=train)
    assert [c[1:] for c in calls] == [(0, "0.5:0", False), (0, "1.0:0", False)]
    assert [(p["n_examples"], p["seed"]) for p in fit["points"]] == [(8, 0), (16, 0), (8, 1), (16, 1)]
    for p in fit["points"][:2]:
        assert p["metric"] == "micro_f1" and np.shape(p["counts"]) == (2, 3) and p["average"] == "micro"
        with open(os.path.join(p["workdir"], "eval", "metrics.json")) as f:
            assert p["f1"] == json.load(f)["micro_f1"]
        with open(os.path.join(p["workdir"], "metrics.jsonl")) as f:  # one epoch of d rows (one example per
            steps = [r for r in map(json.loads, f) if "loss" in r]     # 256-token row), 8 rows per step
            assert len(steps) == p["n_examples"] // 8
    assert fit["bootstrap"]["n_eval_examples"] == 2 and fit["n_points"] == 4
    with open(os.path.join(out, "fit.json")) as f:
        assert json.load(f)["alpha"] == fit["alpha"]
    with open(os.path.join(out, "points.json")) as f:
        assert json.load(f) == fit["points"]
    assert os.path.getsize(os.path.join(out, "fit.png")) > 0

    calls.clear()  # rerun: every point is reused, the fit is the same
    again = scaling.run(config, fractions=[0.5, 1.0], seeds=[0, 1], out=out, train=train)
    assert calls == [] and again["alpha"] == fit["alpha"] and again["points"] == fit["points"]


@pytest.mark.parametrize("argv, message", [
    (["--fractions", "0.5,1"], "--config FILE is required"),
    (["--config", TINY], "--fractions is required"),
    (["--config", TINY, "--fractions", "0.5,x"], "--fractions 0.5,x: expected a comma-separated list of floats"),
    (["--config", TINY, "--fractions", "0.5,1.5"], "distinct numbers in \\(0, 1\\]"),
    (["--config", TINY, "--fractions", "0.5"], "at least two fractions"),
    (["--config", TINY, "--fractions", "0.5,1"], "2 points; the fit needs at least 3"),
    (["--config", TINY, "--fractions", "0.5,1", "--seeds", "0,1"], "train.steps=300 fixes the number of updates"),
    (["--config", TINY, "--fractions", "0.5,1", "--seeds", "0,1", "--config.train.steps=0", "--task", "nope"],
     "--task nope: unknown task"),
    (["--fit-only", "p.json", "--config", TINY], "--fit-only fits given points; --config does not apply"),
    (["--fit-only", "missing.json"], "missing.json"),
    (["--config", TINY, "--fractions", "0.5,1", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_arguments_one_line_exit_2(tmp_path, capsys, argv, message):
    code, _, err = _cli(argv + ["--out", str(tmp_path / "o")], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert re.search(message, err[0]), err[0]
