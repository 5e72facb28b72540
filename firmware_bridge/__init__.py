"""gridminer firmware bridge: code shared by CPython and the hash-board MCU (MicroPython)."""
