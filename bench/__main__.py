"""python -m bench: the transfer benchmark. `python -m bench tracing [--spans N]`: tracing.
`python -m bench load`: the load test (make load). `python -m bench validators`: the eval
service's deterministic validators (pure computation; with `--storage`, through the services
and their databases). `python -m bench judge`: the LLM judge's
throughput against a fake endpoint answering in 200 ms. `python -m bench curation`: datasets
made from judged traces, rows/s (make bench-curation). `python -m bench pods`: a training
pod's start latency, container provider beside local (make bench-pods)."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["tracing"]:
        from bench.tracing import main as tracing

        raise SystemExit(tracing(sys.argv[2:]))
    if sys.argv[1:2] == ["load"]:
        from bench.load import main as load

        raise SystemExit(load(sys.argv[2:]))
    if sys.argv[1:2] == ["validators"]:
        from bench.validators import main as validators

        raise SystemExit(validators(sys.argv[2:]))
    if sys.argv[1:2] == ["curation"]:
        from bench.curation import main as curation

        raise SystemExit(curation(sys.argv[2:]))
    if sys.argv[1:2] == ["pods"]:
        from bench.pods import main as pods

        raise SystemExit(pods(sys.argv[2:]))
    if sys.argv[1:2] == ["judge"]:
        from bench.judge import main as judge

        raise SystemExit(judge(sys.argv[2:]))
    from bench.transfer import main

    raise SystemExit(main())
