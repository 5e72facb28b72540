"""The agent as a system service on a controller board: the supervisor's notify protocol and
watchdog (`notify`), the shipped systemd unit and its installation (`unit`)."""
