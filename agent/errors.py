"""The agent's exception tree. Bad outside input is rejected with a reason, never raised past
the component that read it; these exceptions are for the component's own callers."""


class GridminerError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(GridminerError):
    """A config file or command-line value is invalid; the message names the key and the range."""


class ChainError(GridminerError):
    """The ASIC chain did not answer as expected (enumeration, wrong chip, hung chain)."""


class BoardLinkError(GridminerError):
    """The board link to the bridge firmware failed (timeout, error reply, closed port)."""


class GridLinkError(GridminerError):
    """The MQTT link to the grid operator could not be set up (keys, TLS, broker URL)."""
