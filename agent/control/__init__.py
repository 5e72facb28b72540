"""The decisions on the board: the governor (power tracking with measured feedback), the safety
envelope no command can lift, the power model, the fan loop, and the runtime (the one control
thread that owns every decision and is the only writer to the chain)."""
