"""python -m bench: the transfer benchmark. `python -m bench tracing [--spans N]`: tracing."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["tracing"]:
        from bench.tracing import main as tracing

        raise SystemExit(tracing(sys.argv[2:]))
    from bench.transfer import main

    raise SystemExit(main())
