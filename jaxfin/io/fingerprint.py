"""The identity of a model's weights, cheap even for a 16 GB checkpoint: SHA-256 over each weight file's name, size
and its first and last MiB. Two models of the same shape (Llama-3.1-8B and DeepSeek-R1-Distill-Llama-8B, or a
merged export of a run) differ there, in the tensor bytes right after the header; the same weights copied or moved
elsewhere keep their fingerprint. A training workdir records the fingerprint of its base in run.json, so resuming it
on another base is refused (training/session.check_base).

Weight files: the *.safetensors of a transformers directory, a GGUF file itself, the orbax params/ and lora/ of a
jaxfin checkpoint; a workdir is its base's fingerprint combined with the adapters of its latest checkpoint.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from jaxfin.io import hub, workdir

CHUNK = 1 << 20  # bytes read from each end of a file


def _file_digest(h: "hashlib._Hash", path: Path, name: str) -> None:
    size = path.stat().st_size
    h.update(f"{name}\0{size}\0".encode())
    with open(path, "rb") as f:
        h.update(f.read(CHUNK))
        if size > CHUNK:
            f.seek(max(size - CHUNK, CHUNK))
            h.update(f.read(CHUNK))


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.glob(pattern) if p.is_file() and ".tmp" not in str(p.relative_to(root)))


def _latest_checkpoint(path: Path) -> Path | None:
    steps = [int(p.name) for p in (path / workdir.CHECKPOINTS).glob("*") if p.name.isdigit() and p.is_dir()]
    return path / workdir.CHECKPOINTS / str(max(steps)) if steps else None


def of(path: str | os.PathLike) -> str:
    """The fingerprint (hex) of the weights of a model path: an HF directory or hub id, a GGUF file, a jaxfin
    checkpoint or a training workdir. The same weights give the same value wherever they lie."""
    path = os.fspath(path)
    if hub.is_hub_id(path):
        path = hub.download_model(path)
    p = Path(path).absolute()
    h = hashlib.sha256()
    if p.is_file():
        _file_digest(h, p, "model")
    elif workdir.is_workdir(str(p)):
        h.update(of(workdir.read_run(str(p))["base_model"]).encode())
        latest = _latest_checkpoint(p)
        for f in _files(latest / "lora", "**/*") if latest else []:
            _file_digest(h, f, str(f.relative_to(latest)))
    else:
        files = _files(p, "*.safetensors") or _files(p, "params/**/*") + _files(p, "lora/**/*")
        for f in files:
            _file_digest(h, f, str(f.relative_to(p)))
    return h.hexdigest()
