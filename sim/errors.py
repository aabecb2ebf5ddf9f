"""Errors a user can fix, reported as one clear paragraph instead of a traceback.

Anything raised as a :class:`ConfigError` (bad configuration or input data, found before work
starts) or :class:`RunError` (bad data met during the run, e.g. NaN from a client) is printed by the
entry points as ``error: <message>`` and ends the process with a non-zero code and no traceback.
"""

from __future__ import annotations


class GossipsoupError(Exception):
    """Base class of the errors that a user, not a programmer, must act on."""

    exit_code = 1


class ConfigError(GossipsoupError, ValueError):
    """A configuration value or input file is not acceptable; nothing has run yet."""

    exit_code = 2

    def __init__(self, field: str, value: object, allowed: str, detail: str = ""):
        self.field, self.value, self.allowed = field, value, allowed
        message = f"{field}={value!r} is not allowed: {allowed}."
        if detail:
            message += f" {detail}"
        super().__init__(message)


class RunError(GossipsoupError, RuntimeError):
    """The run met data it cannot continue with (for example NaN parameters from a client)."""

    exit_code = 3


class RunInterrupted(GossipsoupError):
    """SIGINT or SIGTERM stopped the run at a round boundary, after writing a checkpoint to resume from."""

    def __init__(self, signal_name: str, round_: int, run_dir: str):
        self.exit_code = 130 if signal_name == "SIGINT" else 143  # the shell's codes for these signals
        super().__init__(
            f"interrupted by {signal_name} after round {round_}; the run is saved. "
            f"Resume it with: python -m sim resume={run_dir}"
        )
