"""The device side of the grid contract (`spec/grid-protocol.md`): its names and numbers, command
checks, COSE signatures, replay state, telemetry and status maps, the MQTT link and the session
that turns commands into setpoints. The operator side (`agent.site`) reuses the contract code;
nothing here imports it."""
