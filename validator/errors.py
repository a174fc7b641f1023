"""Errors that mean "the input or the command is unusable" (CLI exit code 2)."""

from __future__ import annotations

import os
from pathlib import Path


class InputError(Exception):
    """A problem with the user's input: a missing file, column, tree, or an unusable sample.

    The message is one line that names the file, column or rule at fault; the CLI prints it
    and exits with code 2.
    """


def output_file_problem(path: str | Path, example: str = "a file name") -> str | None:
    """Why an output file cannot be written (a folder, a file on the way to it, an unwritable
    folder), or None; a missing folder is not a problem: it is made when the file is
    written."""
    path = Path(path)
    if path.is_dir():
        return f"is a folder; give a file name (e.g. {example})"
    folder = path.resolve().parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK):
        return f"the folder {existing} is not writable"
    return None
