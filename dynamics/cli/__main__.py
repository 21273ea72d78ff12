"""`python -m dynamics.cli ...`, the same as the `dynamics` command."""

import sys

from . import main

sys.exit(main())
