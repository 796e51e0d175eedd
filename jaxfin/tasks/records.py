"""Reading the shared datasets' files: JSONL (plain or gzip) and CSV rows, each error a ValueError naming file:line;
and the `path#selector` convention by which a task names a derived split of one file.

A `Task.files` value is passed to `Task.read` unchanged. Where a split is not a file of its own (headlines' train and
test are two parts of one file; fpb's train is a PhraseBank file minus the FinBen valid sentences) the value is the
file's path with a `#selector` suffix that only that task's `read` interprets; without the suffix `read` gives the
whole file.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from typing import Any, Iterator


def split_selector(path: str) -> tuple[str, str | None]:
    """("dir/file.csv#train") -> ("dir/file.csv", "train"); a path without "#" -> (path, None)."""
    file, sep, selector = path.rpartition("#")
    if not sep:
        return path, None
    if not selector:
        raise ValueError(f"{path}: empty selector after '#'")
    return file, selector


def _open_text(path: str) -> io.TextIOBase:
    try:
        if path.endswith(".gz"):
            return gzip.open(path, "rt", encoding="utf-8", newline="")
        return open(path, encoding="utf-8", newline="")
    except OSError as e:
        raise ValueError(f"{path}: cannot open ({e.strerror or e})") from e


def read_jsonl(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; a line that is not a JSON object is a ValueError."""
    with _open_text(path) as f:
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})") from e
                if not isinstance(obj, dict):
                    raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                yield lineno, obj
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 ({e.reason})") from e
        except (OSError, EOFError) as e:  # a truncated or corrupt .gz
            raise ValueError(f"{path}: unreadable ({e})") from e


def read_csv(path: str, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) for every CSV record; the header must hold `columns` (others are ignored) and every
    record as many fields as the header."""
    with _open_text(path) as f:
        try:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path}:1: empty file, expected a header with {', '.join(columns)}")
            missing = [c for c in columns if c not in header]
            if missing:
                raise ValueError(f"{path}:1: header lacks column(s) {', '.join(missing)} (has {', '.join(header)})")
            line_start = reader.line_num + 1
            for fields in reader:
                if len(fields) != len(header):
                    raise ValueError(f"{path}:{line_start}: {len(fields)} fields, the header has {len(header)}")
                yield line_start, dict(zip(header, fields))
                line_start = reader.line_num + 1
        except csv.Error as e:
            raise ValueError(f"{path}:{reader.line_num}: {e}") from e
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 ({e.reason})") from e
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: unreadable ({e})") from e


def field(path: str, lineno: int, row: dict[str, Any], key: str, kind: type | tuple[type, ...] = str) -> Any:
    """row[key], checked to be present and of `kind`; the error names file:line and the key."""
    if key not in row:
        raise ValueError(f"{path}:{lineno}: missing key {key!r}")
    value = row[key]
    if not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ValueError(f"{path}:{lineno}: {key!r} should be {want}, got {type(value).__name__}")
    return value
