"""The serial ports the agent opens: `open_port` (by path or pyserial URL) and `SerialPort`, the
part of a pyserial port the chain driver and the board client use."""

from __future__ import annotations

from typing import Any, Protocol

from agent.errors import ConfigError


class SerialPort(Protocol):
    """The part of a pyserial port the agent uses."""

    baudrate: int

    def write(self, data: bytes) -> int | None: ...

    def read(self, size: int = 1) -> bytes: ...

    def flush(self) -> None: ...

    def reset_input_buffer(self) -> None: ...

    def close(self) -> None: ...

    @property
    def in_waiting(self) -> int: ...


def open_port(url: str, what: str = "chain", baudrate: int = 115200,
              timeout_s: float = 0.05) -> Any:
    """A pyserial port by path or URL (pty path, /dev/ttyUSB0, rfc2217://, socket://, and the
    schemes a loaded module registered); ConfigError naming `what` when it cannot be opened."""
    import serial  # pyserial; imported here so unit tests of the logic do not need a port

    try:
        return serial.serial_for_url(url, baudrate=baudrate, timeout=timeout_s,
                                     write_timeout=2.0)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise ConfigError(f"{what} port {url}: cannot open ({exc})") from None
