"""Single-text requests/s of two poolkit servers under the same clients, alternating (issue 29, item 4).

    pip install --no-deps --no-build-isolation --target /tmp/old <a checkout of the old commit>
    python .ci/serve_ab.py /tmp/old [SECONDS] [ROUNDS]

Starts ``poolkit serve`` on the ``host-bert`` preset (one BERT layer 32 wide: little but the
server's own work is left) twice, once with ``PYTHONPATH`` at the old install and once with this
checkout, then drives each in turn with ``poolkit bench-serve``'s 32 closed-loop clients sending one
text a request, ``SECONDS`` each (default 12), ``ROUNDS`` times (default 6), the order swapped every
round. Prints each round's requests/s, p50 and the new/old ratio, then the median ratio.
"""

from __future__ import annotations

import os
import statistics
import sys

from poolkit.config.settings import EngineArgs
from poolkit.entrypoints.bench.load import StartedServer, run_load
from poolkit.entrypoints.bench.presets import resolve_bench_model


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    old_path = sys.argv[1]
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 12.0
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 6
    model, _ = resolve_bench_model("host-bert")
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = old_path
    servers = {"old": StartedServer(EngineArgs(model=model))}
    if saved is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = saved
    servers["new"] = StartedServer(EngineArgs(model=model))
    ratios = []
    try:
        for server in servers.values():
            run_load(server.url, clients=32, seconds=3.0, inputs_per_request=1)  # warm-up
        for r in range(rounds):
            got = {}
            for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
                report = run_load(servers[name].url, clients=32, seconds=seconds, inputs_per_request=1).as_dict()
                got[name] = report["requests_per_s"]
                print(f"round {r + 1} {name}: {report['requests_per_s']} requests/s, p50 {report['p50_ms']} ms, {report['status_codes']}")
            ratios.append(got["new"] / got["old"])
            print(f"round {r + 1}: new / old {ratios[-1]:.2f}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    print(f"median new / old over {rounds} rounds: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
