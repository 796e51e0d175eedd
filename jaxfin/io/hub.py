"""Hugging Face hub ids where a model or dataset path is expected (`deepseek-ai/DeepSeek-R1-Distill-Llama-8B`,
`Cleanlab/fire-financial-ner-extraction`). A local path always wins; downloads need network access or the cache."""

from __future__ import annotations

import os
import re

from jaxfin.errors import UserError

# Only these files of a model repo are fetched: pickle `.bin` weights never are.
# A path ending like a data or weights file is a mistyped local path, never a hub id.
LOCAL_SUFFIXES = {".jsonl", ".json", ".csv", ".parquet", ".gz", ".py", ".safetensors", ".bin", ".txt", ".gguf"}
MODEL_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]


def is_hub_id(path: str) -> bool:
    """`owner/name` that is not a local path."""
    if os.path.exists(path) or path.startswith((".", "~")) or os.path.splitext(path)[1] in LOCAL_SUFFIXES:
        return False
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", path))


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def download_model(repo_id: str) -> str:
    """A hub model id -> its local snapshot directory (config, safetensors, tokenizer and generation files)."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, allow_patterns=MODEL_FILES)
    except Exception as e:  # offline, unknown id, gated: one line, whatever the hub client raised
        raise UserError(f"{repo_id}: no such local directory, and downloading it from the Hugging Face hub failed: "
                        f"{_first_line(e)}") from None


def load_dataset_split(where: str, *args, **kwargs):
    """datasets.load_dataset(*args, split="train", **kwargs) without progress bars; failures -> one UserError line."""
    import datasets  # heavy; only hub ids and parquet files need it

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(*args, split="train", **kwargs)
    except Exception as e:  # offline, unknown id, unreadable file
        what = "no such local file, and the hub dataset cannot be loaded" if is_hub_id(where) else "cannot load the dataset"
        raise UserError(f"{where}: {what}: {_first_line(e)}") from None
    finally:
        if bars:
            datasets.enable_progress_bars()
