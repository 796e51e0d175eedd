"""Hub ids in model and data paths: resolved through huggingface_hub / datasets (stubbed here: no network)."""

import socket
import time

import datasets
import huggingface_hub
import pytest

from jaxfin.errors import UserError
from jaxfin.io import hub, store
from jaxfin.tasks import ner


@pytest.fixture(autouse=True)
def online(monkeypatch):
    """The hub counts as reachable (its clients are stubbed) unless a test says otherwise."""
    monkeypatch.setattr(hub, "reachable", lambda: True)


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

    def fake_snapshot(repo_id, allow_patterns, local_files_only):
        calls.append((repo_id, allow_patterns))
        return str(tmp_path)  # an empty directory: load_model then says it is not a model

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    with pytest.raises(UserError, match="not a model directory"):
        store.load("org/model")
    assert calls[0][0] == "org/model"
    assert "*.safetensors" in calls[0][1] and not any(p.endswith(".bin") for p in calls[0][1])


def test_model_hub_failure_is_one_line(monkeypatch):
    def offline(repo_id, allow_patterns, local_files_only):
        raise OSError("We couldn't connect to 'https://huggingface.co'\ntrace")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(UserError, match=r"^org/model: no such local directory, and downloading .*couldn't connect"):
        store.load("org/model")


def test_unreachable_hub_is_probed_once_and_asks_the_cache_only(monkeypatch):
    """No network: one quick probe, then the cache alone (no ~20 s of retries), and one line."""
    monkeypatch.undo()  # the real reachable()
    hub.reachable.cache_clear()
    probes = []

    def refused(address, timeout):
        probes.append(address)
        raise OSError("Name or service not known")
    monkeypatch.setattr(socket, "create_connection", refused)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []

    def snapshot(repo_id, allow_patterns, local_files_only):
        calls.append(local_files_only)
        raise FileNotFoundError("not in the cache")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    t0 = time.perf_counter()
    for _ in range(2):
        with pytest.raises(UserError, match=r"^org/model: no such local directory, not in the Hugging Face cache, and "
                                            r"the hub cannot be reached \(offline\?\)$"):
            store.load("org/model")
    assert time.perf_counter() - t0 < 5 and calls == [True, True] and len(probes) == 1
    hub.reachable.cache_clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"^Cleanlab/x: no such local file, not in the datasets cache, and "
                                        r"HF_HUB_OFFLINE is set$"):
        ner.load_examples("Cleanlab/x")
    assert len(probes) == 1  # HF_HUB_OFFLINE: no probe at all
    hub.reachable.cache_clear()
