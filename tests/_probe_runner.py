"""Runs probes in this process, one after another (tests/test_probes.py).

Reads a JSON list of [name, source] from stdin; before each probe it
prints ``START i``, after it ``PASS i`` or ``FAIL i <reason>`` (i: its index)
(flushed), so that the parent attributes a crash (a signal, an abort) to
the probe that was running and reruns the rest in a fresh process.
"""

import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    probes = json.load(sys.stdin)
    import _probe_prelude

    base = {k: v for k, v in vars(_probe_prelude).items() if not k.startswith("__")}
    out = sys.__stdout__
    for index, (name, source) in enumerate(probes):
        out.write(f"START {index}\n")
        out.flush()
        ns = dict(base)
        try:
            exec(compile(source, f"<probe {name}>", "exec"), ns)  # noqa: S102
        except BaseException as e:  # noqa: BLE001 - a probe's failure, reported
            tb = traceback.extract_tb(e.__traceback__)
            where = next((f"line {fr.lineno}" for fr in reversed(tb)
                          if fr.filename.startswith("<probe")), "")
            msg = f"{type(e).__name__}: {e} {where}".replace("\n", " ")[:500]
            out.write(f"FAIL {index} {msg}\n")
        else:
            out.write(f"PASS {index}\n")
        out.flush()


if __name__ == "__main__":
    main()
