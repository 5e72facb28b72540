"""Exceptions of the hil package (the lab rig); bad outside input is rejected with a reason."""

from agent.errors import GridminerError


class EmulatorError(GridminerError):
    """The board emulator cannot start or was given invalid options."""


class FaultPlanError(EmulatorError):
    """A fault plan (file or API call) is invalid; the message names the entry and the field."""
