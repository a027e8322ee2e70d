"""Exceptions that the CLI turns into one clear line on stderr."""

from __future__ import annotations


class CarlosError(Exception):
    """An error meant for the user: its message is printed as-is, without a traceback."""

    exit_code = 1


class UsageError(CarlosError):
    exit_code = 2


class NotFound(CarlosError):
    """A REF or other name that matches nothing."""


class ModelUnavailable(CarlosError):
    """Weights a command needs are not on this machine: the operator's configuration, not the request
    (the API answers 500 with the code ``model_unavailable``; a retry cannot help)."""

    code = "model_unavailable"


class DatabaseError(CarlosError):
    """The registry database cannot be reached, or is in a state this code refuses."""


class LeaseLost(CarlosError):
    """A job's lease token no longer holds: another worker owns the job now."""


def first_line(message: BaseException | str, *, limit: int | None = None, default: str = "") -> str:
    """The first line of an exception's message (or of a text), cut to ``limit`` characters.

    Library messages can run to pages (a traceback of a server, a parser dump); an error shown to
    a user or stored with a job wants one line. ``default`` when the message is empty.
    """
    lines = str(message).strip().splitlines()
    line = lines[0].rstrip() if lines else default
    return line[:limit] if limit else line
