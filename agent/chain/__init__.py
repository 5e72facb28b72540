"""The ASIC chain and its board, as the controller drives them: the chain driver (bring-up, work,
frequency ramp, health and recovery; polled, never blocking), the serial port, the blocking
start-up helpers (probe, take-over, wind-down), chain statistics, the work and job table, and the
board-link client of the bridge firmware."""
