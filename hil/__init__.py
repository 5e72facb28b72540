"""gridminer hardware-in-the-loop rig: board emulator, plant physics, grid simulator, scenarios."""
