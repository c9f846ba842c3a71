"""python -m bench: run every benchmark (today: the transfer one)."""

from __future__ import annotations

from bench.transfer import main

if __name__ == "__main__":
    raise SystemExit(main())
