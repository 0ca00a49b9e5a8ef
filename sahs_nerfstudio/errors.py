"""One line for every user mistake: the shared error handling of every SAHS command.

A :class:`~sahs_nerfstudio.errors.FormatError` (bad data, a bad flag, a run that does not
load) ends a command with one line on stderr -- ``<prog>: error: <file>: field '<f>': expected
<e>, found <x>`` -- and exit status 2. The traceback is printed only when ``SAHS_DEBUG=1``.

Two ways in, one implementation:

- the plugin's own CLIs (``sahs-*``) wrap their ``main`` with :func:`run_cli` / :func:`cli_entrypoint`;
- nerfstudio's entry points (``ns-train``, ``ns-eval``, ``ns-render``, ``ns-viewer``) are not ours, but
  they import the plugin's method config through its entry point, which calls
  :func:`install_excepthook` so that an uncaught FormatError there gets the same line and status.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from pathlib import Path
from types import TracebackType
from typing import Callable, Optional, Type


class FormatError(ValueError):
    """A dataset file (or a flag) does not hold what its format says it should."""

    def __init__(self, path: Path | str, field_name: str, expected: str, found: str) -> None:
        self.path = Path(path)
        self.field_name = field_name
        self.expected = expected
        self.found = found
        super().__init__(f"{path}: field '{field_name}': expected {expected}, found {found}")


DEBUG_ENV = "SAHS_DEBUG"
"""Set to 1 to get the full traceback after the one-line message."""

EXIT_BAD_INPUT = 2
"""Exit status for bad input (the argparse/tyro convention for usage errors)."""

EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT), the shell convention."""

COMMAND_LINE = "<command line>"
"""The ``path`` of a FormatError about a flag rather than a file."""


def debug_enabled() -> bool:
    """Whether the user asked for tracebacks (``SAHS_DEBUG`` set to anything but empty or 0)."""
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def flag_error(flag: str, expected: str, found: object) -> FormatError:
    """A FormatError about a command-line flag, e.g. ``flag_error("--fps", "a positive number", 0)``."""
    return FormatError(COMMAND_LINE, flag, expected, repr(found) if not isinstance(found, str) else found)


def find_format_error(err: BaseException) -> Optional[FormatError]:
    """The FormatError behind ``err``: itself, or one in its ``__cause__`` / ``__context__`` chain.

    Libraries re-raise our errors wrapped (nerfstudio's config instantiation, torch's checkpoint
    loader); the user still made the same mistake and deserves the same line.
    """
    seen: set[int] = set()
    cur: Optional[BaseException] = err
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, FormatError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


_SPAWNED_ERRORS = ("FormatError: ", "CheckpointNotSaved: ")


def spawned_format_error(err: BaseException) -> Optional[str]:
    """The FormatError text of an error raised in a process spawned by ``ns-train --machine.num-devices N``.

    torch's spawn sends only the child's formatted traceback to the parent, which raises it as a
    ``ProcessRaisedException``; its last ``...FormatError: <text>`` line is the user's mistake.
    """
    if type(err).__name__ != "ProcessRaisedException":
        return None
    for line in reversed(str(err).splitlines()):
        for marker in _SPAWNED_ERRORS:
            head, sep, text = line.partition(marker)
            if sep and " " not in head.strip():
                return text
    return None


def error_line(prog: str, err: FormatError) -> str:
    """The one line a user sees."""
    return f"{prog}: error: {err}"


def _prog_name() -> str:
    return Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "sahs"


def report(prog: str, err: BaseException) -> None:
    """Print the one line for ``err`` (and the traceback under SAHS_DEBUG) to stderr."""
    fmt = find_format_error(err)
    assert fmt is not None
    sys.stdout.flush()
    if debug_enabled():
        traceback.print_exception(err)
    print(error_line(prog, fmt), file=sys.stderr, flush=True)


def run_cli(main: Callable[[], Optional[int]], prog: Optional[str] = None) -> int:
    """Run ``main`` and return its exit status, turning bad input into one line and status 2.

    ``main`` returns None (success) or a status. Ctrl-C ends with one line and status 130.
    Anything that is not a FormatError is a bug and keeps its traceback.
    """
    name = prog or _prog_name()
    try:
        status = main()
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as err:
        if find_format_error(err) is None:
            raise
        report(name, err)
        return EXIT_BAD_INPUT
    return int(status or 0)


def cli_entrypoint(prog: str) -> Callable[[Callable[[], Optional[int]]], Callable[[], None]]:
    """Decorator for a console-script entry point: ``@cli_entrypoint("sahs-x") def entrypoint(): ...``.

    The decorated function runs under :func:`run_cli` and the process exits with its status.
    """

    def wrap(main: Callable[[], Optional[int]]) -> Callable[[], None]:
        @functools.wraps(main)
        def entry() -> None:
            sys.exit(run_cli(main, prog))

        return entry

    return wrap


_previous_hook: Optional[Callable[..., object]] = None


def _excepthook(
    exc_type: Type[BaseException], exc: BaseException, tb: Optional[TracebackType]
) -> None:  # pragma: no cover - exercised through subprocess tests
    previous = _previous_hook or sys.__excepthook__
    spawned = spawned_format_error(exc)
    if spawned is not None and not debug_enabled():
        print(f"{_prog_name()}: error: {spawned}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_BAD_INPUT)
    if find_format_error(exc) is None:
        previous(exc_type, exc, tb)
        return
    report(_prog_name(), exc.with_traceback(tb))
    # A SystemExit raised inside sys.excepthook sets the interpreter's exit status (atexit still runs).
    raise SystemExit(EXIT_BAD_INPUT)


def install_excepthook() -> None:
    """Make an uncaught FormatError in any command of this process one line and exit status 2.

    Idempotent; keeps whatever hook was installed before for every other exception.
    """
    global _previous_hook
    if sys.excepthook is _excepthook:
        return
    _previous_hook = sys.excepthook
    sys.excepthook = _excepthook
