"""gridminer hardware-in-the-loop rig: board emulator, plant physics, grid simulator, scenarios.

Importing `hil` registers the pyserial URL handlers `asicemu://` and `asicboard://`
(hil/protocol_asicemu.py, hil/protocol_asicboard.py).
"""


def _register_url_handlers() -> None:
    try:
        import serial
    except ImportError:  # pyserial is a dependency; without it there are no URLs to register
        return
    if "hil" not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append("hil")


_register_url_handlers()
