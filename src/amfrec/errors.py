"""Errors that signal a user mistake (bad input), shown as one line by the command line."""


class AmfrecError(Exception):
    """A user-facing error: the message names the file, row or field at fault."""
