"""The one error type for bad input: it names the file, the field, what was expected and what was found.

Its text is the line a user sees (``sahs_nerfstudio.errors`` prints it and exits with status 2).
It lives in its own module so that every reader (``formats``, ``json_fields``, ``semantics``)
can raise it without importing another; ``sahs_nerfstudio.data.formats.FormatError`` is this class.
"""

from __future__ import annotations

from pathlib import Path


class FormatError(ValueError):
    """A dataset file (or a flag) does not hold what its format says it should."""

    def __init__(self, path: Path | str, field_name: str, expected: str, found: str) -> None:
        self.path = Path(path)
        self.field_name = field_name
        self.expected = expected
        self.found = found
        super().__init__(f"{path}: field '{field_name}': expected {expected}, found {found}")
