"""gridminer agent: runs on the miner's controller and turns it into a flexible grid load."""

__version__ = "0.1.0"
