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
