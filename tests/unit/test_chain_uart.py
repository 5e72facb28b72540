"""The chain UART reopening a port that failed (agent/chain/uart.py): no port is left open."""

from __future__ import annotations

from agent.chain.uart import ChainUart
from agent.clock import FakeClock


class Port:
    """A pyserial-like port that records `close`; `refuse_baud` makes setting a rate fail, as a
    device that came back as something else does."""

    def __init__(self, refuse_baud: bool = False) -> None:
        self.refuse_baud = refuse_baud
        self.closed = False
        self._baud = 115200

    @property
    def baudrate(self) -> int:
        return self._baud

    @baudrate.setter
    def baudrate(self, baud: int) -> None:
        if self.refuse_baud:
            raise OSError(f"cannot set {baud} baud")
        self._baud = baud

    in_waiting = 0

    def write(self, data: bytes) -> int:
        return len(data)

    def read(self, size: int = 1) -> bytes:
        return b""

    def flush(self) -> None: ...

    def reset_input_buffer(self) -> None: ...

    def close(self) -> None:
        self.closed = True


def test_a_reopened_port_that_refuses_the_rate_in_force_is_closed_not_leaked() -> None:
    opened: list[Port] = []

    def reopen() -> Port:
        opened.append(Port(refuse_baud=len(opened) == 0))
        return opened[-1]

    first = Port()
    uart = ChainUart(first, "BM1370", FakeClock(), threaded=False, reopen=reopen)
    uart.set_baud(1_000_000)

    assert not uart._reopened(first)  # the reader's reopen step after `first` failed
    assert first.closed and opened[0].closed and uart.reopens == 0
    assert uart._reopened(first)
    assert uart.port is opened[1] and not opened[1].closed
    assert opened[1].baudrate == 1_000_000 and uart.reopens == 1
    uart.close()
    assert opened[1].closed
