"""The HIL lane uses the rig's pytest plugin: `pytest tests/hil [--hil-target chain=URL,board=URL]
[--hil-broker URL] [--hil-out DIR] [--hil-full]` (see hil/pytest_plugin.py). Give tests/hil on
the command line so these options are known when pytest parses it."""

from hil.pytest_plugin import hil_run, pytest_addoption

__all__ = ["hil_run", "pytest_addoption"]
