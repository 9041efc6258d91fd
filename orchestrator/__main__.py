"""Entry point for ``python -m orchestrator``."""

import sys

try:
    from orchestrator.cli import main
except KeyboardInterrupt:  # Ctrl-C while the command line itself loads: nothing was done yet
    exec("")  # clears CPython's "unhandled interrupt" flag (see orchestrator.cli)
    print("keyfleet: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
