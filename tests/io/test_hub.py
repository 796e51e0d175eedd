"""Hub ids in model and data paths: resolved through huggingface_hub / datasets (stubbed here: no network)."""

import datasets
import huggingface_hub
import pytest

from jaxfin.errors import UserError
from jaxfin.io import hub, store
from jaxfin.tasks import ner


def test_is_hub_id(tmp_path):
    assert hub.is_hub_id("deepseek-ai/DeepSeek-R1-Distill-Llama-8B")
    assert hub.is_hub_id("Cleanlab/fire-financial-ner-extraction")
    assert not hub.is_hub_id("runs/tiny/../x/y")
    assert not hub.is_hub_id("data/typo.jsonl")  # a mistyped local file, not a download
    assert not hub.is_hub_id("./org/name") and not hub.is_hub_id("~/models")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b").mkdir()
    assert not hub.is_hub_id(str(tmp_path / "a" / "b"))


def test_dataset_hub_id_reads_cleanlab_schema(monkeypatch):
    rows = {"text": ["Apple sold 5 units.", "Nothing here."],
            "ground_truth": ["{'Company': ['Apple'], 'Quantity': ['5 units']}", "{'Company': []}"]}
    calls = []

    def fake_load(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.Dataset.from_dict(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    examples = ner.load_examples("Cleanlab/fire-financial-ner-extraction")
    assert calls[0][0] == ("Cleanlab/fire-financial-ner-extraction",) and calls[0][1]["split"] == "train"
    assert examples[0]["entities"]["Company"] == ["Apple"] and examples[0]["entities"]["Quantity"] == ["5 units"]
    assert [e["id"] for e in examples] == ["0", "1"]


def test_dataset_hub_failure_is_one_line(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hugging Face Hub\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match=r"^Cleanlab/x: no such local file, and the hub dataset cannot be loaded: Couldn't reach the Hugging Face Hub$"):
        ner.load_examples("Cleanlab/x")


def test_model_hub_id_downloads_safetensors_only(monkeypatch, tmp_path):
    calls = []

    def fake_snapshot(repo_id, allow_patterns):
        calls.append((repo_id, allow_patterns))
        return str(tmp_path)  # an empty directory: load_model then says it is not a model

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    with pytest.raises(UserError, match="not a model directory"):
        store.load("org/model")
    assert calls[0][0] == "org/model"
    assert "*.safetensors" in calls[0][1] and not any(p.endswith(".bin") for p in calls[0][1])


def test_model_hub_failure_is_one_line(monkeypatch):
    def offline(repo_id, allow_patterns):
        raise OSError("We couldn't connect to 'https://huggingface.co'\ntrace")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(UserError, match=r"^org/model: no such local directory, and downloading .*couldn't connect"):
        store.load("org/model")
