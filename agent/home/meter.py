"""The home meter's grid power from what it publishes: a bare number (Home Assistant's MQTT
statestream, many meters) or a field of a JSON document, named by a dotted path with list
indices (`ENERGY.Power` for Tasmota, `total_act_power` or `emeters.0.power` for Shelly).

Meters disagree on the sign: most report import (power drawn from the grid) as positive, some
export. `MeterReader.export_w` returns the export in watts either way (negative: importing).
Anything else is refused with a reason (`MeterError`), never guessed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any


class MeterError(ValueError):
    """A meter message that holds no usable reading; the text says why."""


@dataclass(frozen=True)
class MeterReader:
    field: str | None = None  # dotted path into a JSON document; None: the payload is a number
    positive: str = "import"  # what a positive reading means: "import" or "export"
    scale: float = 1.0  # to watts (1000 for a meter in kW)

    def export_w(self, payload: bytes) -> float:
        """The export in W (negative: import). MeterError when the payload holds none."""
        try:
            text = payload.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise MeterError("not UTF-8 text") from None
        value: Any
        if self.field is None:
            value = text
        else:
            try:
                doc = json.loads(text)
            except ValueError:
                raise MeterError(f"not JSON (expected a document with {self.field})") from None
            value = _at(doc, self.field)
        reading = _number(value)
        watts = reading * self.scale
        return watts if self.positive == "export" else -watts


def _at(doc: Any, path: str) -> Any:
    node = doc
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise MeterError(f"no {path} in the document (missing at {part!r})")
    return node


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise MeterError(f"{value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MeterError(f"{str(value)[:40]!r} is not a number") from None
    if not math.isfinite(number):
        raise MeterError(f"{number} is not a finite reading")
    return number
