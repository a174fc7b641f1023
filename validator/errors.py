"""Errors that mean "the input or the command is unusable" (CLI exit code 2)."""

from __future__ import annotations


class InputError(Exception):
    """A problem with the user's input: a missing file, column, tree, or an unusable sample.

    The message is one line that names the file, column or rule at fault; the CLI prints it
    and exits with code 2.
    """
