"""pyserial URL handler `asicboard://NAME`: the board link of the in-process emulator NAME.

See hil/protocol_asicemu.py: attaches to the emulator NAME, or creates it from the query.
"""

from __future__ import annotations

from hil.protocol_asicemu import Serial as _ChainSerial


class Serial(_ChainSerial):
    """The bridge firmware's board link of a registered emulator."""

    ENDPOINT = "board"
