"""The decisions on the board: the governor (power tracking with measured feedback) and its
online model correction, the safety envelope no command can lift and its sensor judgement, the
power model, the fan loop, and the runtime (the one control thread that owns every decision and
is the only writer to the chain) with its side of the board link, its rate-limited warnings and
its read-out (telemetry figures, status line)."""
