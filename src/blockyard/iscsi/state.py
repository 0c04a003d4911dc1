"""The states of a target connection (the rows of ``target._DISPATCH``)."""

from __future__ import annotations

from enum import Enum


class State(Enum):
    LOGIN = "login"
    FULL_FEATURE = "full-feature"
    LOGGED_OUT = "logged-out"
    CLOSED = "closed"
