"""``python -m bench.compare`` as before: the comparison now ships inside the
package (fastnn/bench/compare.py; ``fastnn bench`` is its command)."""

import runpy

if __name__ == "__main__":
    runpy.run_module("fastnn.bench.compare", run_name="__main__", alter_sys=True)
