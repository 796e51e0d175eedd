"""User-facing errors: one clear line, a non-zero exit, no traceback unless --debug.

The rule, followed across the package:
  * Computation (model/, training/step.py and losses.py, infer/, the pure helpers of tasks/ and recipes/) raises
    ValueError / TypeError for arguments it cannot work with: those are programming errors of the caller.
  * The boundary where outside input enters turns what is wrong with it into a UserError naming the file and line,
    the config key, the tensor or the flag: config checks (training/session.py, the CLIs), file readers (io/,
    the task readers), argument parsing (ArgumentParser below). A ValueError from computation that a user's input
    can cause is caught there and re-raised as a UserError with that name.
  * run_cli prints a UserError (and an OSError about a file) as one `error: ...` line, exit code 2; anything else
    is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Callable, Sequence


class UserError(ValueError):
    """Bad input (data, config, checkpoint, CLI argument); the message names the file/line/key/tensor. A
    ValueError, so code that validates values may catch both alike."""


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
    except (UserError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        if debug:
            raise
        msg = str(e) if isinstance(e, UserError) else f"{e.filename}: {e.strerror}"
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
