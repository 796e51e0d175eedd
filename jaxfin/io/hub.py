"""Hugging Face hub ids where a model or dataset path is expected (`deepseek-ai/DeepSeek-R1-Distill-Llama-8B`,
`Cleanlab/fire-financial-ner-extraction`). A local path always wins; downloads need network access or the cache.

Without a network the hub client retries for about 20 s before it fails; the hub is probed once instead (a TCP
connection to its host, or HF_HUB_OFFLINE set), and when it cannot be reached only the local cache is asked."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
from typing import Iterator
from urllib.parse import urlparse

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


@functools.lru_cache(maxsize=None)
def reachable() -> bool:
    """Whether the hub can be reached: False with HF_HUB_OFFLINE set or when its host does not answer within 3 s
    (asked once per process)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or (80 if url.scheme == "http" else 443)), timeout=3).close()
    except OSError:
        return False
    return True


def _offline_note() -> str:
    return "HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE") else "the hub cannot be reached (offline?)"


@contextlib.contextmanager
def _cache_only() -> Iterator[None]:
    """The hub and datasets clients in offline mode for the block (they then read their caches only)."""
    import datasets.config
    import huggingface_hub.constants as hub_constants

    old = hub_constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = old


def download_model(repo_id: str) -> str:
    """A hub model id -> its local snapshot directory (config, safetensors, tokenizer and generation files);
    from the cache alone when the hub cannot be reached."""
    from huggingface_hub import snapshot_download

    online = reachable()
    try:
        return snapshot_download(repo_id, allow_patterns=MODEL_FILES, local_files_only=not online)
    except Exception as e:  # offline, unknown id, gated: one line, whatever the hub client raised
        if not online:
            raise UserError(f"{repo_id}: no such local directory, not in the Hugging Face cache, and "
                            f"{_offline_note()}") from None
        raise UserError(f"{repo_id}: no such local directory, and downloading it from the Hugging Face hub failed: "
                        f"{_first_line(e)}") from None


def load_dataset_split(where: str, *args, **kwargs):
    """datasets.load_dataset(*args, split="train", **kwargs) without progress bars; failures -> one UserError line."""
    import datasets  # heavy; only hub ids and parquet files need it

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    offline = is_hub_id(where) and not reachable()
    try:
        with _cache_only() if offline else contextlib.nullcontext():
            return datasets.load_dataset(*args, split="train", **kwargs)
    except Exception as e:  # offline, unknown id, unreadable file
        if offline:
            raise UserError(f"{where}: no such local file, not in the datasets cache, and {_offline_note()}") from None
        what = "no such local file, and the hub dataset cannot be loaded" if is_hub_id(where) else "cannot load the dataset"
        raise UserError(f"{where}: {what}: {_first_line(e)}") from None
    finally:
        if bars:
            datasets.enable_progress_bars()
