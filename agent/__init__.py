"""gridminer agent: runs on the miner's controller and turns it into a flexible grid load."""

__version__ = "0.1.0"

#: The day of this release (Unix seconds, UTC), bumped with `__version__`. A device's wall clock
#: that reads earlier is wrong (a board without a real-time clock boots in 1970 until NTP sets
#: it), so the grid session acts on no command against it (`agent.clock.WallClockTrust`).
__build_epoch__ = 1_796_083_200  # 2026-12-01
