"""Helpers of the task readers (the files themselves are read by jaxfin.io.files): a row's field checked with
file:line in the error, and the `path#selector` convention by which a task names a derived split of one file.

A `Task.files` value is passed to `Task.read` unchanged. Where a split is not a file of its own (headlines' train and
test are two parts of one file; fpb's train is a PhraseBank file minus the FinBen valid sentences) the value is the
file's path with a `#selector` suffix that only that task's `read` interprets; without the suffix `read` gives the
whole file.
"""

from __future__ import annotations

from typing import Any


def split_selector(path: str) -> tuple[str, str | None]:
    """("dir/file.csv#train") -> ("dir/file.csv", "train"); a path without "#" -> (path, None)."""
    file, sep, selector = path.rpartition("#")
    if not sep:
        return path, None
    if not selector:
        raise ValueError(f"{path}: empty selector after '#'")
    return file, selector


def field(path: str, lineno: int, row: dict[str, Any], key: str, kind: type | tuple[type, ...] = str) -> Any:
    """row[key], checked to be present and of `kind`; the error names file:line and the key."""
    if key not in row:
        raise ValueError(f"{path}:{lineno}: missing key {key!r}")
    value = row[key]
    if not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ValueError(f"{path}:{lineno}: {key!r} should be {want}, got {type(value).__name__}")
    return value
