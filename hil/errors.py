"""Exceptions of the hil package (the lab rig); bad outside input is rejected with a reason."""

from agent.errors import GridminerError


class HilError(GridminerError):
    """Base of the lab rig's errors."""


class EmulatorError(HilError):
    """The board emulator cannot start or was given invalid options."""


class FaultPlanError(EmulatorError):
    """A fault plan (file or API call) is invalid; the message names the entry and the field."""


class BrokerError(HilError):
    """The test broker cannot be found, started or asked for something it was not set up with."""
