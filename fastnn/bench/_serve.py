"""The request loop of bench.compare's worker processes (jax_worker.py,
torch_worker.py): JSON lines on stdin, one JSON reply line each on stdout,
{"op": NAME, ...} answered by the worker's method NAME.

A failed correctness check (AssertionError) is replied as
{"error", "check_failed": true}, which stops the parent's run; any other
error as {"error"}, which the parent shows in its table.
"""

import json
import sys


def serve(make_worker, ready):
    """Build the worker (an ImportError: replied as "not installed"), reply
    ready(worker), then answer requests until {"op": "quit"} or end of input."""
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints must not break the protocol
    try:
        worker = make_worker()
    except ImportError as exc:
        print(json.dumps({"error": f"not installed ({exc})"}), file=out, flush=True)
        return 1
    print(json.dumps({"ready": True, **ready(worker)}), file=out, flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "quit":
            break
        try:
            reply = getattr(worker, req["op"])(req)
        except AssertionError as exc:
            reply = {"error": f"{exc}", "check_failed": True}
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), file=out, flush=True)
    return 0
