"""User-facing errors: one clear line, a non-zero exit, no traceback unless --debug.

The rule, followed across the package:
  * Computation (model/, training/step.py and losses.py, infer/, the pure helpers of tasks/ and recipes/) raises
    ValueError / TypeError for arguments it cannot work with: those are programming errors of the caller.
  * The boundary where outside input enters turns what is wrong with it into a UserError naming the file and line,
    the config key, the tensor or the flag: config checks (training/session.py, the CLIs), file readers (io/,
    the task readers), argument parsing (ArgumentParser below). A ValueError from computation that a user's input
    can cause is caught there and re-raised as a UserError with that name.
  * run_cli prints a UserError (and an OSError about a file) as one `error: ...` line, exit code 2; anything else
    is a bug and keeps its traceback. Writers turn what the system refuses (read-only filesystem, disk full) into
    a UserError naming the output (io/files.writing); a device out of memory is one line naming the keys to lower
    (out_of_memory).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import re
import sys
import warnings
from typing import Callable, Iterator, Sequence


class UserError(ValueError):
    """Bad input (data, config, checkpoint, CLI argument); the message names the file/line/key/tensor. A
    ValueError, so code that validates values may catch both alike."""


# OSErrors that are about a file or the filesystem (one line), not about the program (a traceback).
_FILE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG,
                errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EMFILE}


def file_error(path: str | os.PathLike, e: OSError) -> UserError:
    """One line for an OSError while writing `path`: `PATH: cannot write: No space left on device`."""
    return UserError(f"{os.fspath(path)}: cannot write: {e.strerror or e}")


def _oom_size(message: str) -> str:
    m = re.search(r"allocate ([\d.]+ ?[KMGT]i?B|\d+ bytes)", message)
    return f" (XLA asked for {m.group(1)})" if m else ""


@contextlib.contextmanager
def out_of_memory(what: str, keys: str) -> Iterator[None]:
    """A device out-of-memory error (XLA's RESOURCE_EXHAUSTED, 40 lines) inside the block -> one UserError line
    saying what did not fit and which settings lower the memory it needs."""
    try:
        yield
    except Exception as e:  # jax.errors.JaxRuntimeError; matched by its status text, so jax need not be imported
        text = str(e)
        if "RESOURCE_EXHAUSTED" not in text and "Out of memory" not in text:
            raise
        raise UserError(f"out of device memory: {what} did not fit{_oom_size(text)}; lower {keys}") from e


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """The boundary of the error rule: a core ValueError (a reader's file:line message) becomes a UserError line."""
    try:
        yield
    except UserError:
        raise
    except ValueError as e:
        raise UserError(str(e)) from None


def positive_int(s: str) -> int:
    """argparse type of a count flag (--batch-size, --max-new-tokens): an integer >= 1."""
    if not s.isdigit() or int(s) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return int(s)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one `error:` line (exit 2) like every other bad input."""

    def error(self, message: str) -> None:
        raise UserError(f"{message} (see {self.prog} --help)")


def run_cli(main: Callable[[Sequence[str]], int | None], argv: Sequence[str] | None = None) -> None:
    """Runs `main(argv)`; turns UserError (and bad-file OSErrors) into `error: ...` on stderr and exit code 2, and
    warnings into `warning: ...` lines. With `--debug` in argv the exception propagates with its traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        with warnings.catch_warnings():  # restores the hook afterwards (CLIs are also run in-process by tests)
            # Data warnings (dropped examples, mentions not in their text) as one line each, no source lines.
            warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)
            code = main(argv)
    except (UserError, OSError) as e:
        file_level = isinstance(e, OSError) and (e.filename is not None or e.errno in _FILE_ERRNOS)
        if debug or not (isinstance(e, UserError) or file_level):
            raise
        if isinstance(e, UserError):
            msg = str(e)
        else:
            msg = f"{e.filename}: {e.strerror}" if e.filename is not None else (e.strerror or str(e))
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
    except UnicodeDecodeError as e:
        if debug:
            raise
        print(f"error: an input file is not UTF-8 text ({e.reason} at byte {e.start})", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
