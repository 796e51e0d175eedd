"""Multi-task SFT (data.tasks with two or more tasks): each task's training split, the mixture and schedule over
them (data/mixture.py), the per-task loss (losses.SftConfig.task_names: `loss/NAME` in metrics.jsonl) and the
per-task evaluation (evaluation/suite.py) into WORKDIR/eval/NAME/ with WORKDIR/eval/summary.md.

`fire` reads data.train / data.eval (any NER format, the entity types from its training data, as a one-task run
does); every other task reads its own train and valid splits (Task.files). A run of `fire` alone keeps the
one-task path of sft.py unchanged: the same batches, losses and WORKDIR/eval/ layout as before multi-task runs.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import ml_collections

from jaxfin import tasks
from jaxfin.data import batches, chat, mixture, subset
from jaxfin.errors import UserError
from jaxfin.evaluation import suite
from jaxfin.io import store
from jaxfin.model.params import Params
from jaxfin.tasks import ner
from jaxfin.tasks.base import Example, Task
from jaxfin.training import sharding


def task_names(config: ml_collections.ConfigDict) -> list[str]:
    """data.tasks as a list of registered task names, with data.mixture and data.schedule checked."""
    names = suite.task_names(config.data.tasks)
    mixture.parse_mixture(config.data.mixture)
    if config.data.schedule not in mixture.SCHEDULES:
        raise UserError(f"data.schedule={config.data.schedule!r}: choose one of {', '.join(mixture.SCHEDULES)}")
    return names


def task_files(spec: str, names: Sequence[str]) -> dict[str, str]:
    """data.task_train, "NAME=PATH[,NAME=PATH...]", as {name: path}; UserError naming the key for a bad entry."""
    files: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in (spec or "").split(","))):
        name, sep, path = entry.partition("=")
        if not sep or not path.strip() or name.strip() not in names or name.strip() == "fire":
            raise UserError(f"data.task_train: {entry!r} is not NAME=PATH for a task of data.tasks other than fire "
                            f"(fire's file is data.train)")
        files[name.strip()] = path.strip()
    return files


def train_sets(names: Sequence[str], fire_train: str, data: ml_collections.ConfigDict
               ) -> tuple[list[tuple[Task, list[Example]]], list[str]]:
    """[(task, training examples)] in data.tasks order, and fire's entity types ([] without fire). Each task reads
    fire_train (fire), its data.task_train file, or its shipped train split, then keeps data.train_subset of it."""
    files = task_files(data.task_train, names)
    sets, types = [], []
    for name in names:
        if name == "fire":
            examples = ner.load_examples(fire_train)
            types = ner.entity_types(examples)  # of the whole set: every subset is prompted alike
            task = tasks.get("fire", types=types)
        else:
            task = tasks.get(name)
            examples = suite.read_examples(task, files.get(name, task.files["train"]))
        sets.append((task, subset.select(examples, data.train_subset)))
    return sets, types


def eval_jobs(names: Sequence[str], fire_eval: str | None, types: Sequence[str], max_examples: int) -> list[suite.Job]:
    """Each task's valid split (fire: data.eval), the first eval.max_examples of each (-1 all); [] when 0."""
    if max_examples == 0:
        return []
    return [suite.load_job(n, "valid", data=fire_eval if n == "fire" else None, max_examples=max_examples,
                           fire_types=types) for n in names]


def make_stream(sets: Sequence[tuple[Task, list[Example]]], tokenizer: Any, eos_ids: Sequence[int],
                config: ml_collections.ConfigDict) -> mixture.Stream:
    """The run's batches over the tasks' encoded examples, per data.mixture and data.schedule."""
    encoded = [chat.encode_task(task, examples, tokenizer, eos_ids=eos_ids) for task, examples in sets]
    counts = mixture.epoch_counts([len(e) for e in encoded], config.data.mixture)
    for (task, _), n, c in zip(sets, [len(e) for e in encoded], counts):
        print(f"task {task.name}: {n} training examples, {c} per epoch")
    return mixture.Stream(encoded, counts, seq_len=config.train.seq_len, pad_id=tokenizer.pad_token_id or 0,
                          seed=config.seed, batch_size=config.train.batch_size, schedule=config.data.schedule,
                          total_steps=config.train.steps or None, epochs=config.train.epochs)


def stream_batch(position: int, *, stream: mixture.Stream, accum: int, sh: sharding.TrainShardings,
                 seq_len: int) -> dict[str, jax.Array]:
    """Batch number `position` of the stream as global [A, B/A, T] arrays on the mesh (cf. sft.sft_batch)."""
    global_shape = (accum, stream.batch_size // accum, seq_len)
    rows = batches.local_rows(lambda **proc: stream.batch(position, **proc), sh.batch, global_shape)
    return batches.put_batch(batches.micro_batches(rows, accum), sh.batch, global_shape)


def evaluate(out_dir: str, model: store.Model, adapters: Params, lcfg: Any, jobs: Sequence[suite.Job],
             config: ml_collections.ConfigDict, step: int, baselines: dict | None = None) -> dict[str, dict]:
    """Every task's evaluation with the adapters -> OUT/NAME/ and OUT/summary.{json,md}."""
    mesh = jax.tree.leaves(adapters)[0].sharding.mesh
    print(f"eval step {step}: {', '.join(j.task.name for j in jobs)}")
    return suite.evaluate_tasks(model, jobs, out_dir, max_new_tokens=config.eval.max_new_tokens,
                                batch_size=config.eval.batch_size, adapters=adapters, lora_config=lcfg, mesh=mesh,
                                meta={"workdir": config.workdir, "step": str(step)}, baselines=baselines)


def baseline(wd: str, model: store.Model, state: Any, lcfg: Any, jobs: Sequence[suite.Job],
             config: ml_collections.ConfigDict) -> dict | None:
    """eval.baseline for several tasks: WORKDIR/eval/baseline/NAME/ at step 0, read back on a resume."""
    out = os.path.join(wd, "eval", "baseline")
    done = suite.read_results(out, [j.task.name for j in jobs])
    if done is not None:
        return done
    if state.step != 0:
        print(f"note: eval.baseline: {out} is incomplete and the run resumes at step {state.step}, so no baseline")
        return None
    return evaluate(out, model, state.adapters, lcfg, jobs, config, 0)

