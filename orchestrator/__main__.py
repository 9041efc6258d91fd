"""Entry point for ``python -m orchestrator``."""

import sys

try:
    from orchestrator.cli import main
except KeyboardInterrupt:  # Ctrl-C while the command line itself loads: nothing was done yet
    exec("")  # clears CPython's "unhandled interrupt" flag (see orchestrator.cli)
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut what is left to say
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("keyfleet: interrupted", file=sys.stderr)
    if "--json" in sys.argv[1:]:  # the one document --json promises, on this exit path too
        from orchestrator.console import print_error_json

        print_error_json(None, "interrupted", "interrupted by the operator", 130)
    raise SystemExit(130) from None

raise SystemExit(main())
