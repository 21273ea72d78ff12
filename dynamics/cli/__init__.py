"""The `dynamics` command line: each sub-command is a thin layer over the library.

`parser.py` declares the flags (shared ones once), `commands.py` holds one function per sub-command and
`tables.py` the plan and status tables they print. `main` turns any bad input into one line and exit status 2.
"""

from __future__ import annotations

from ..config import ConfigError
from .commands import fail
from .parser import build_parser
from .tables import print_plan, status_table

__all__ = ["build_parser", "main", "print_plan", "status_table"]


def main(argv: list[str] | None = None) -> int:
    """Parse, run the command, and turn any bad-input error of any command into one line (exit status 2)."""
    from experiments.registry import RegistryError

    from ..affinity import AffinityError
    from ..pieces import PieceError
    from ..results import RunLockedError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may stand anywhere among the options
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args)
    except (ConfigError, RegistryError, PieceError, AffinityError, FileNotFoundError, RunLockedError) as exc:
        return fail(str(exc))
