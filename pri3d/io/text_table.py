"""Line-oriented text tables: the shared loop of the readers of pair lists, poses, calibration,
drive tables and crop boxes.

A reader walks the non-blank lines with :func:`table_lines` and parses each one inside
:func:`expect_line`, so that every malformed line is reported the same way:
``<file>:<line>: expected <what>[, got '<line>'] (<why>)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["expect_line", "table_lines"]


def table_lines(path: str | os.PathLike[str], description: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without surrounding whitespace) of every non-blank line of ``path``.

    Raises FileNotFoundError ``<path>: <description>`` for a missing file, e.g. ``description`` =
    ``"poses file not found"``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {description}")
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            line = line.strip()
            if line:
                yield number, line


@contextmanager
def expect_line(
    path: str | os.PathLike[str], number: int, expected: str, got: str | None = None
) -> Iterator[None]:
    """Re-raise a ValueError (or IndexError) of the parse of one line as a ValueError naming the file
    and line: ``<path>:<number>: expected <expected>[, got <got!r>] (<the error>)``."""
    try:
        yield
    except (ValueError, IndexError) as error:
        shown = "" if got is None else f", got {got!r}"
        raise ValueError(f"{path}:{number}: expected {expected}{shown} ({error})") from None
