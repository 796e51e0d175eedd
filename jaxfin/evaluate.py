"""Financial-NER evaluation: entity-level micro P/R/F1 (the paper's metric) with a bootstrap CI, per-type scores,
seqeval over IOB2 tags, parse failures and overlength; writes metrics.json, predictions.jsonl, report.md and a PNG.

  python -m jaxfin.evaluate --model PATH --data GOLD.jsonl --out DIR [--max-new-tokens N] [--batch-size B]
                            [--max-examples K]
  python -m jaxfin.evaluate --predictions PRED.jsonl --data GOLD.jsonl --out DIR

A prediction is {"entities": {type: [mention, ...]} | None (parse failure), "completion"?: str,
"finish_reason"?: "stop" | "length"}, aligned with the gold examples.
"""

from __future__ import annotations

import collections
import json
import os
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxfin import ner
from jaxfin import errors
from jaxfin.errors import UserError, run_cli

Pair = tuple[str, str]  # (type, normalised mention)
METRIC_KEYS = ("n_examples", "micro_precision", "micro_recall", "micro_f1", "micro_f1_ci95", "macro_f1", "per_type",
               "seqeval", "parse_failure_rate", "overlength_rate")
CHART = "per_type_f1.png"


def pairs(entities: Mapping[str, Any] | None) -> set[Pair]:
    """The set of (type, normalised mention) of a gold or predicted entity dict; empty mentions dropped."""
    out: set[Pair] = set()
    for t, mentions in (entities or {}).items():
        for m in [mentions] if isinstance(mentions, str) else mentions or ():
            if isinstance(m, str) and (key := ner.normalize_mention(m)):
                out.add((t, key))
    return out


def prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    """Precision, recall, F1 = 2TP / (2TP + FP + FN); a ratio with a zero denominator is 0."""
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return float(p), float(r), float(f)


def bootstrap_f1(tp_N: np.ndarray, fp_N: np.ndarray, fn_N: np.ndarray, *, resamples: int = 1000,
                 seed: int = 0, level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of micro-F1 over examples (Efron & Tibshirani 1993, ch. 13): resample the N
    examples with replacement, re-sum their TP/FP/FN counts, take the F1 quantiles. Fixed seed: reproducible."""
    n = len(tp_N)
    if n == 0:
        return [0.0, 0.0]
    counts_N3 = np.stack([tp_N, fp_N, fn_N], axis=1).astype(np.int64)
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // n)  # resamples per step: the gathered [S, N, 3] int64 counts stay under ~50 MB
    sums = [counts_N3[rng.integers(0, n, (min(chunk, resamples - s), n))].sum(axis=1)
            for s in range(0, resamples, chunk)]
    tp_S, fp_S, fn_S = np.concatenate(sums).T
    denom_S = 2 * tp_S + fp_S + fn_S
    f1_S = np.where(tp_S > 0, 2 * tp_S / np.maximum(denom_S, 1), 0.0)
    lo, hi = np.quantile(f1_S, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def iob2_tags(tokens: Sequence[str], entity_pairs: set[Pair]) -> tuple[list[str], list[Pair]]:
    """IOB2 tags placing every occurrence of every mention on the token sequence, longer mentions first, never
    over an already tagged token; returns (tags, mentions that found no free occurrence)."""
    tags = ["O"] * len(tokens)
    unplaced = []
    for t, m in sorted(entity_pairs, key=lambda p: (-len(p[1].split()), -len(p[1]), p)):
        words, placed = m.split(), False
        k = len(words)
        for i in range(len(tokens) - k + 1):
            if tokens[i:i + k] == words and all(tag == "O" for tag in tags[i:i + k]):
                tags[i:i + k] = [f"B-{t}"] + [f"I-{t}"] * (k - 1)
                placed = True
        if not placed:
            unplaced.append((t, m))
    return tags, unplaced


def _seqeval(gold_examples: Sequence[Mapping], gold_sets: list[set[Pair]], pred_sets: list[set[Pair]]) -> dict:
    """seqeval (Nakayama 2018; conlleval's entity-level scoring) over the located mentions."""
    from seqeval.metrics import classification_report

    y_true, y_pred = [], []
    for ex, g, p in zip(gold_examples, gold_sets, pred_sets):
        tokens = ner.normalize_mention(ex["text"]).split()
        y_true.append(iob2_tags(tokens, g)[0])
        y_pred.append(iob2_tags(tokens, p)[0])
    with warnings.catch_warnings():  # numpy's "mean of empty slice" when no entity exists at all
        warnings.simplefilter("ignore", RuntimeWarning)
        report = classification_report(y_true, y_pred, output_dict=True, zero_division=0)
    clean = lambda v: 0.0 if np.isnan(v) else float(v)  # noqa: E731  (macro over no types is nan in seqeval)
    per_type = {t: {"precision": clean(r["precision"]), "recall": clean(r["recall"]), "f1": clean(r["f1-score"]),
                    "support": int(r["support"])} for t, r in report.items() if not t.endswith(" avg")}
    return {"micro_f1": clean(report["micro avg"]["f1-score"]), "macro_f1": clean(report["macro avg"]["f1-score"]),
            "per_type": per_type}


def score(gold_examples: Sequence[Mapping], predictions: Sequence[Mapping],
          types: Sequence[str] | None = None) -> dict:
    """metrics.json for predictions aligned with gold examples (see the module docstring for a prediction).
    Predicted types outside the dataset's `types` (default: ner.entity_types(gold)) are false positives."""
    if len(gold_examples) != len(predictions):
        raise ValueError(f"{len(gold_examples)} gold examples but {len(predictions)} predictions")
    types = list(types) if types is not None else ner.entity_types(gold_examples)
    gold_sets = [pairs(ex["entities"]) for ex in gold_examples]
    pred_sets = [pairs(p.get("entities")) for p in predictions]
    tp_N = np.array([len(g & p) for g, p in zip(gold_sets, pred_sets)], np.int64)
    fp_N = np.array([len(p - g) for g, p in zip(gold_sets, pred_sets)], np.int64)
    fn_N = np.array([len(g - p) for g, p in zip(gold_sets, pred_sets)], np.int64)
    by_type = {t: collections.Counter() for t in types}
    for g, p in zip(gold_sets, pred_sets):
        for t, _ in g & p:
            by_type.setdefault(t, collections.Counter())["tp"] += 1
        for t, _ in p - g:
            by_type.setdefault(t, collections.Counter())["fp"] += 1
        for t, _ in g - p:
            by_type.setdefault(t, collections.Counter())["fn"] += 1
    per_type = {}
    for t in types:
        c = by_type[t]
        p, r, f = prf(c["tp"], c["fp"], c["fn"])
        per_type[t] = {"precision": p, "recall": r, "f1": f, "support": c["tp"] + c["fn"]}
    supported = [v["f1"] for v in per_type.values() if v["support"] > 0]
    micro_p, micro_r, micro_f = prf(tp_N.sum(), fp_N.sum(), fn_N.sum())
    n = len(gold_examples)
    return {
        "n_examples": n,
        "micro_precision": micro_p,
        "micro_recall": micro_r,
        "micro_f1": micro_f,
        "micro_f1_ci95": bootstrap_f1(tp_N, fp_N, fn_N),
        "macro_f1": float(np.mean(supported)) if supported else 0.0,
        "per_type": per_type,
        "seqeval": _seqeval(gold_examples, gold_sets, pred_sets),
        "parse_failure_rate": sum(p.get("entities") is None for p in predictions) / n if n else 0.0,
        "overlength_rate": sum(p.get("finish_reason") == "length" for p in predictions) / n if n else 0.0,
    }


def prediction_rows(gold_examples: Sequence[Mapping], predictions: Sequence[Mapping]) -> list[dict]:
    """One predictions.jsonl row per example: id, completion, finish_reason, parsed entities (None = parse
    failure), fp / fn as sorted [type, mention] lists, and the gold / predicted mentions seqeval could not place
    in the text (no free occurrence on token boundaries)."""
    rows = []
    for ex, pred in zip(gold_examples, predictions):
        g, p = pairs(ex["entities"]), pairs(pred.get("entities"))
        tokens = ner.normalize_mention(ex["text"]).split()
        rows.append({"id": ex["id"], "completion": pred.get("completion"), "finish_reason": pred.get("finish_reason"),
                     "entities": pred.get("entities"), "fp": sorted(map(list, p - g)),
                     "fn": sorted(map(list, g - p)), "unplaced_gold": sorted(map(list, iob2_tags(tokens, g)[1])),
                     "unplaced_pred": sorted(map(list, iob2_tags(tokens, p)[1]))})
    return rows


# --------------------------------------------------------------------------------------------------------------
# Output files.


def _atomic_write(path: str, write: Callable[[str], None]) -> None:
    """write(tmp) then rename over `path`, so a reader never sees a half-written file."""
    head, tail = os.path.split(path)
    tmp = os.path.join(head, f".{tail}.tmp-{os.getpid()}")  # same directory: the rename cannot cross filesystems
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_text(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    _atomic_write(path, write)


def _chart(path: str, metrics: Mapping) -> None:
    """Horizontal bars of per-type F1, entity-level beside seqeval (Agg canvas, no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    types = list(metrics["per_type"])
    y = np.arange(len(types))
    fig = Figure(figsize=(7, 1.2 + 0.45 * max(len(types), 1)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ent = [metrics["per_type"][t]["f1"] for t in types]
    seq = [metrics["seqeval"]["per_type"].get(t, {}).get("f1", 0.0) for t in types]
    ax.barh(y - 0.2, ent, height=0.4, label="entity F1", color="#3b6ea8")
    ax.barh(y + 0.2, seq, height=0.4, label="seqeval F1", color="#a8a8a8")
    for i, t in enumerate(types):
        ax.text(min(ent[i], 1.0) + 0.01, i - 0.2, f"{ent[i]:.3f} (n={metrics['per_type'][t]['support']})",
                va="center", fontsize=8)
    ax.set_yticks(y, types)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.25)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel("F1")
    lo, hi = metrics["micro_f1_ci95"]
    ax.set_title(f"micro F1 {metrics['micro_f1']:.3f} (95% CI {lo:.3f}-{hi:.3f}), n={metrics['n_examples']}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncols=2, fontsize=8, frameon=False)
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def _report_md(metrics: Mapping, rows: Sequence[Mapping], meta: Mapping[str, str]) -> str:
    m, seq = metrics, metrics["seqeval"]
    lo, hi = m["micro_f1_ci95"]
    n_fail = sum(r["entities"] is None for r in rows)
    lines = ["# NER evaluation", ""]
    lines += [f"- {k}: `{v}`" for k, v in meta.items()]
    lines += [
        f"- examples: {m['n_examples']}",
        f"- **micro F1 {m['micro_f1']:.4f}** (95% bootstrap CI {lo:.4f}-{hi:.4f}), "
        f"precision {m['micro_precision']:.4f}, recall {m['micro_recall']:.4f}; macro F1 {m['macro_f1']:.4f}",
        f"- seqeval: micro F1 {seq['micro_f1']:.4f}, macro F1 {seq['macro_f1']:.4f}",
        f"- parse failures: {n_fail} ({m['parse_failure_rate']:.2%}); stopped at max_new_tokens: "
        f"{m['overlength_rate']:.2%}",
        "", f"![per-type F1]({CHART})", "",
        "| type | support | precision | recall | F1 | seqeval F1 |", "|---|---:|---:|---:|---:|---:|",
    ]
    for t, v in m["per_type"].items():
        sf = seq["per_type"].get(t, {}).get("f1", 0.0)
        lines.append(f"| {t} | {v['support']} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | {sf:.4f} |")
    n_gold, n_pred = (sum(len(r[k]) for r in rows) for k in ("unplaced_gold", "unplaced_pred"))
    lines += ["", "Entity scores compare sets of (type, mention) per example, mentions NFKC-normalised with whitespace "
              "collapsed, case kept. seqeval scores IOB2 tags of the mentions placed on the whitespace tokens of "
              f"the text; {n_gold} gold and {n_pred} predicted mentions had no free occurrence there, so they count "
              "only in the entity scores (a predicted mention absent from the text is a FP there, unseen by seqeval)."]
    for name, key in (("false positives", "fp"), ("false negatives", "fn")):
        common = collections.Counter(tuple(e) for r in rows for e in r[key]).most_common(10)
        if common:
            lines += ["", f"Most frequent {name}:", "", "| type | mention | count |", "|---|---|---:|"]
            lines += [f"| {t} | {mention.replace('|', chr(92) + '|')} | {c} |" for (t, mention), c in common]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str, metrics: Mapping, rows: Sequence[Mapping], *,
                 meta: Mapping[str, str] | None = None) -> None:
    """DIR/metrics.json, DIR/predictions.jsonl, DIR/report.md and DIR/per_type_f1.png, each written atomically."""
    os.makedirs(out_dir, exist_ok=True)
    _write_text(os.path.join(out_dir, "metrics.json"), json.dumps({k: metrics[k] for k in METRIC_KEYS}, indent=2))
    _write_text(os.path.join(out_dir, "predictions.jsonl"),
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    _chart(os.path.join(out_dir, CHART), metrics)
    _write_text(os.path.join(out_dir, "report.md"), _report_md(metrics, rows, meta or {}))


# --------------------------------------------------------------------------------------------------------------
# Predictions: from a model, or from a file.


def evaluate_model(model: Any, examples: Sequence[Mapping], *, max_new_tokens: int, batch_size: int,
                   types: Sequence[str] | None = None, tokenizer: Any = None, verbose: bool = False,
                   mesh: Any = None) -> list[dict]:
    """Greedy completions of a jaxfin.checkpoint.Model for the examples' prompts -> predictions
    [{"completion", "finish_reason", "entities"}] in example order. `mesh`: see decode.greedy (rows split over
    the devices of every process)."""
    from jaxfin import data, decode

    tokenizer = tokenizer if tokenizer is not None else model.tokenizer()
    if tokenizer is None:
        raise UserError(f"{model.source}: the model has no tokenizer files, so prompts cannot be built")
    types = list(types) if types is not None else ner.entity_types(examples)
    prompts = [data.prompt_ids(tokenizer, ner.prompt_messages(*ner.to_triple(ex, types)[:2])) for ex in examples]
    completions = decode.greedy(
        model.params, model.cfg, prompts, max_new_tokens=max_new_tokens, stop_ids=model.eos_ids,
        batch_size=batch_size, lora=model.lora, lora_scale=model.lora_config.scale if model.lora is not None else 1.0,
        verbose=verbose, mesh=mesh)
    out = []
    for c in completions:
        text = tokenizer.decode(c.token_ids, skip_special_tokens=False)  # keep <think> tags visible to the parser
        out.append({"completion": text, "finish_reason": c.finish_reason, "entities": ner.parse_completion(text)})
    return out


def load_predictions(path: str, gold_examples: Sequence[Mapping]) -> list[dict]:
    """Lines {"id", "completion"} (parsed here) or {"id", "entities"}, optional "finish_reason", matched to the
    gold examples by id; every gold id needs exactly one line."""
    by_id: dict[str, dict] = {}
    for lineno, row in ner.read_jsonl(path):
        where = f"{path}:{lineno}"
        if "id" not in row:
            raise UserError(f"{where}: no 'id' field")
        ex_id = str(row["id"])
        if ex_id in by_id:
            raise UserError(f"{where}: duplicate id {ex_id!r}")
        if isinstance(row.get("completion"), str):
            entities = ner.parse_completion(row["completion"])
        elif "entities" in row:
            entities = row["entities"]
            ok = entities is None or (isinstance(entities, dict) and all(
                v is None or isinstance(v, str) or (isinstance(v, list) and all(isinstance(m, str) for m in v))
                for v in entities.values()))
            if not ok:
                raise UserError(f"{where}: 'entities' must be null or {{type: [mention, ...] | mention | null}}")
            entities = None if entities is None else ner.entities_from_json(entities)
        else:
            raise UserError(f"{where}: needs 'completion' (a string) or 'entities'")
        by_id[ex_id] = {"completion": row.get("completion"), "finish_reason": row.get("finish_reason"),
                        "entities": entities}
    if not by_id:
        raise UserError(f"{path}: no predictions (empty file)")
    gold_ids = [ex["id"] for ex in gold_examples]
    unknown = sorted(set(by_id) - set(gold_ids))
    missing = [i for i in gold_ids if i not in by_id]
    if unknown or missing:
        raise UserError(f"{path}: ids do not match the gold data: {len(unknown)} not in the gold data"
                        + (f" (first {unknown[0]!r})" if unknown else "") + f", {len(missing)} gold ids without "
                        "a prediction" + (f" (first {missing[0]!r})" if missing else ""))
    return [by_id[i] for i in gold_ids]


def main(argv: Sequence[str]) -> int:
    parser = errors.ArgumentParser(prog="python -m jaxfin.evaluate", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="HF model dir, jaxfin checkpoint or training workdir; generates greedily")
    source.add_argument("--predictions", help="JSONL of {id, completion} or {id, entities} made elsewhere")
    parser.add_argument("--data", required=True, help="gold examples (any format jaxfin.ner.load_examples reads)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-examples", type=int, default=None, help="score only the first K examples (--model)")
    args = parser.parse_args(argv)
    if args.max_examples is not None and (args.predictions or args.max_examples < 1):
        parser.error("--max-examples takes K >= 1 and only applies with --model")

    gold = ner.load_examples(args.data)
    types = ner.entity_types(gold)  # from the whole file, so a prefix keeps every type
    if args.model:
        from jaxfin.checkpoint import load_model

        gold = gold[: args.max_examples]
        model = load_model(args.model)
        predictions = evaluate_model(model, gold, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                     types=types, verbose=True)
        meta = {"model": args.model, "data": args.data, "max_new_tokens": str(args.max_new_tokens)}
    else:
        predictions = load_predictions(args.predictions, gold)
        meta = {"predictions": args.predictions, "data": args.data}
    metrics = score(gold, predictions, types)
    write_report(args.out, metrics, prediction_rows(gold, predictions), meta=meta)
    lo, hi = metrics["micro_f1_ci95"]
    print(f"micro F1 {metrics['micro_f1']:.4f} (95% CI {lo:.4f}-{hi:.4f})  macro F1 {metrics['macro_f1']:.4f}  "
          f"seqeval micro F1 {metrics['seqeval']['micro_f1']:.4f}  parse failures {metrics['parse_failure_rate']:.2%}"
          f"  n={metrics['n_examples']}  -> {os.path.join(args.out, 'report.md')}")
    return 0


if __name__ == "__main__":
    run_cli(main)
