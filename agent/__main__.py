"""`python -m agent` is the `gridminer` command."""

import sys

from agent.cli import main

sys.exit(main())
