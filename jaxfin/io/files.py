"""Files in and out, one copy each: atomic writes of a file or a directory (a reader never sees half of one, and
a failure leaves nothing in place of the old output), checks that an output can be written before any work, and
JSON / JSONL reading whose errors name file:line. What the operating system refuses while writing (a read-only
filesystem, a full disk) is one UserError naming the output, never the temporary file."""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from jaxfin.errors import UserError, file_error


def check_writable(path: str | os.PathLike, *, folder: bool = False, make_parents: bool = False,
                   name: str | None = None) -> None:
    """Refuses, before any work, an output that cannot be written: a folder where a file is expected or the
    reverse, a parent folder that does not exist (not created for you, unless `make_parents`: then the nearest
    existing one counts), or a folder the process cannot write in (read-only filesystem, permissions). `name`
    starts the message (default: the path; e.g. "--out OUT")."""
    path = os.fspath(path)
    name = name or path
    p = os.path.abspath(path)
    if os.path.exists(p):
        if folder and not os.path.isdir(p):
            raise UserError(f"{name}: is a file, expected a folder")
        if not folder and os.path.isdir(p):
            raise UserError(f"{name}: is a folder, expected a file name")
    parent = os.path.dirname(p)
    if make_parents:
        while not os.path.exists(parent) and os.path.dirname(parent) != parent:
            parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        what = "does not exist (create it first)" if not os.path.exists(parent) else "is not a folder"
        raise UserError(f"{name}: the folder {parent} {what}")
    where = p if folder and os.path.isdir(p) else parent
    if not os.access(where, os.W_OK | os.X_OK):
        raise UserError(f"{name}: cannot write in {where} (read-only filesystem or no permission)")


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """What the system refuses while writing the output `path` (read-only filesystem, disk full, permissions) ->
    one UserError naming `path` (not a temporary file beside it). An error about another file (an input read
    while writing) passes through unchanged."""
    try:
        yield
    except OSError as e:
        out = os.path.abspath(path)
        ours = (out, os.path.join(os.path.dirname(out), "." + os.path.basename(out)))
        if e.filename is not None and not os.path.abspath(os.fsdecode(e.filename)).startswith(ours):
            raise
        raise file_error(path, e) from None


@contextlib.contextmanager
def removed_on_error(path: str | os.PathLike) -> Iterator[None]:
    """Removes what the block created of `path` (it and the folders above it that did not exist at entry) when
    the block fails, so that a run that stops at bad input leaves nothing behind."""
    created, p = None, Path(path).absolute()
    while not p.exists() and p.parent != p:
        created, p = p, p.parent
    try:
        yield
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """write(tmp) into a temporary file beside `path`, then rename it over `path` (same directory: the rename
    cannot cross filesystems); on failure the temporary file is removed and `path` is untouched. An OSError is
    one UserError naming `path`."""
    head, tail = os.path.split(os.path.abspath(path))
    tmp = os.path.join(head, f".{tail}.tmp-{os.getpid()}")
    try:
        with writing(path):
            write(tmp)
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    """`text` (UTF-8) written atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(path, write)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> None:
    """One JSON object per line (UTF-8, non-ASCII kept), written atomically."""
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


@contextlib.contextmanager
def atomic_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yields a fresh temp dir beside `out_dir`; on success it replaces `out_dir` (removed first if present), on
    failure it is deleted, so readers never see a half-written directory."""
    out = Path(out_dir).absolute()
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        os.chmod(tmp, 0o755)
    try:
        with writing(out):
            yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with writing(out):
        old = None
        if out.exists() or out.is_symlink():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()


def write_files(out_dir: Path, files: Mapping[str, bytes]) -> None:
    """name (relative, may contain folders) -> bytes, written under `out_dir`."""
    for name, data in files.items():
        (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / name).write_bytes(data)


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file; UserError naming the file and line when it is not valid JSON."""
    try:
        with open_text(path) as f, reading(path):
            return json.loads(f.read())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None


def open_text(path: str | os.PathLike) -> io.TextIOBase:
    """A text file for reading: UTF-8 with an optional byte-order mark (files saved on Windows), gzip when the name
    ends in .gz; newline="" so csv sees the file's own line ends."""
    path = os.fspath(path)
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


@contextlib.contextmanager
def reading(path: str | os.PathLike) -> Iterator[None]:
    """Turns what goes wrong while reading `path` into one UserError naming it: text that is not UTF-8, a
    truncated or corrupt gzip file."""
    try:
        yield
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except (EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"{path}: unreadable ({e})") from None


def json_line(path: str, lineno: int, line: str, invalid: str = "malformed JSON") -> dict:
    """One JSONL line as an object; UserError "FILE:LINE: <invalid> (reason at column C)" otherwise. A line that
    opens a JSON array or is a lone brace (a pretty-printed JSON file saved as .jsonl) says that JSONL has one
    object per line."""
    try:
        row = json.loads(line.rstrip("\r\n"))  # else a missing "}" is reported at column 1
    except json.JSONDecodeError as e:
        text = line.strip()
        if text in ("[", "{") or (text.startswith("[") and text.endswith(("{", "[", ","))):
            raise UserError(f"{path}:{lineno}: not JSON Lines: this looks like one pretty-printed JSON document; "
                            f"JSONL needs one JSON object per line") from None
        raise UserError(f"{path}:{lineno}: {invalid} ({e.msg} at column {e.colno})") from None
    if isinstance(row, list):
        raise UserError(f"{path}:{lineno}: expected a JSON object, got list (JSONL needs one JSON object per line)")
    if not isinstance(row, dict):
        raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
    return row


def read_jsonl(path: str, invalid: str = "malformed JSON") -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file (.gz too); UserError naming file:line for a
    line that is not a JSON object (`invalid` words the message for text that is not JSON at all)."""
    with open_text(path) as f, reading(path):
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield lineno, json_line(path, lineno, line, invalid)


def read_csv(path: str, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) for every CSV record; the header must hold `columns` (others are ignored) and every
    record as many fields as the header."""
    with open_text(path) as f, reading(path):
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None:
                raise UserError(f"{path}:1: empty file, expected a header with {', '.join(columns)}")
            missing = [c for c in columns if c not in header]
            if missing:
                raise UserError(f"{path}:1: header lacks column(s) {', '.join(missing)} (has {', '.join(header)})")
            line_start = reader.line_num + 1
            for fields in reader:
                if len(fields) != len(header):
                    raise UserError(f"{path}:{line_start}: {len(fields)} fields, the header has {len(header)}")
                yield line_start, dict(zip(header, fields))
                line_start = reader.line_num + 1
        except csv.Error as e:
            raise UserError(f"{path}:{reader.line_num}: {e}") from None
