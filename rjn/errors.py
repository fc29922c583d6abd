"""The one exception family rjn raises for expected failures."""

from __future__ import annotations


class RjnError(Exception):
    """An expected failure: a message for the user, a hint on what to try, an exit code."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ConfigError(RjnError):
    """remote.toml is missing or wrong."""

    exit_code = 2


class ConnectionFailed(RjnError):
    """The SSH connection could not be made or was lost."""

    exit_code = 3


class RemoteError(RjnError):
    """A remote action failed."""

    exit_code = 4


class Timeout(RjnError):
    """Something did not become ready before its deadline."""

    exit_code = 5
