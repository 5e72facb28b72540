"""The lab rig's exception tree (hil/errors.py): one base for every hil failure."""

from __future__ import annotations

import pytest

from hil import broker
from hil.errors import HilError


def test_a_missing_broker_binary_is_a_lab_rig_error(monkeypatch):
    monkeypatch.setattr(broker, "BINARY_CANDIDATES", ())
    monkeypatch.setenv("PATH", "")
    with pytest.raises(HilError, match="mosquitto not found"):
        broker.find_binary()

