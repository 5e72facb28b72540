"""The fleet emulator: many virtual devices on one broker, each with its own MQTT connection.

Each device runs the agent's own grid code (`agent.grid`: command checks, signatures, replay
state, acks, status, telemetry, fallback) and its own governor and envelope (`agent.control`) on
a lumped plant model (power, heat, hashrate). One thread drives them all: a selector loop over
the paho clients' sockets and a timer heap for the devices' control ticks.

Modules: `mix` (miner models and shares), `plant` (the lumped board physics), `device` (one
virtual device), `loop` (the selector loop), `fleet` (the fleet, its faults, its Python API),
`group` (the same API over several `gridminer fleet` processes), `cli` (`gridminer fleet`).
"""
