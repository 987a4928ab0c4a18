"""Compare two ``fastnn bench --json`` files figure by figure.

A results file is ``{"machine": [...], "results": [entry, ...]}``; each
entry names its section and the case it measured (every field that is not
a figure: case, threads, batch, model, ...) and holds figures, either one
number or one per contender ({"fastnn-c": ..., "numpy": ..., "torch":
...}).  A figure's direction is known by its name (FIGURES): throughput and
accuracy are better higher, times and memory lower.

``--fail-over`` applies to fastnn's own figures (a contender named
fastnn-..., or a figure of fastnn alone); the comparators' figures are
printed beside them for context: a machine that got slower shows in them
too.
"""

import json
import math

# figure name -> +1 (higher is better) or -1 (lower is better)
FIGURES = {"GFLOP/s": 1, "GB/s": 1, "samples/s": 1, "model-samples/s": 1, "accuracy": 1,
           "test_accuracy": 1, "seconds": -1, "fit_s": -1, "peak_kb": -1}
# neither a figure nor part of what names the case
_IGNORED = {"MFLOP/sample", "base_kb", "same_best", "jax_error"}


def parse_threshold(text):
    """'10%' or '10' -> 0.10 (a bare number is a percentage too)."""
    raw = str(text).strip()
    value = raw[:-1] if raw.endswith("%") else raw
    try:
        pct = float(value)
    except ValueError:
        raise ValueError(f"--fail-over: expected a percentage like 10%, got {text!r}") from None
    if not math.isfinite(pct) or pct < 0:
        raise ValueError(f"--fail-over: expected a percentage >= 0, got {text!r}")
    return pct / 100.0


def load(path):
    """The results list of a bench JSON file; ValueError if it is not one."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable bench JSON file ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ValueError(f"{path}: not a fastnn bench results file (no 'results' list)")
    return data["results"]


def figures(results):
    """{(case key, figure label): (value, direction, ours)} of a results
    list; case key is a readable string of the identifying fields."""
    out = {}
    for entry in results:
        if not isinstance(entry, dict):
            continue
        ident = {k: v for k, v in entry.items() if k not in FIGURES and k not in _IGNORED}
        key = " ".join(f"{k}={v}" if k != "section" else str(v) for k, v in ident.items())
        for name, direction in FIGURES.items():
            value = entry.get(name)
            if isinstance(value, dict):
                for impl, v in value.items():
                    if _number(v):
                        out[(key, f"{name} [{impl}]")] = (float(v), direction,
                                                          str(impl).startswith("fastnn"))
            elif _number(value):
                out[(key, name)] = (float(value), direction, True)
    return out


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def compare(baseline, current, threshold):
    """Rows (case, figure, old, new, change, flag) and whether any of
    fastnn's figures got worse by more than `threshold` (a fraction).

    change is (new - old) / old; "worse" is a drop for higher-is-better
    figures and a rise for the others."""
    old, new = figures(baseline), figures(current)
    rows, regressed = [], False
    for key in sorted(set(old) | set(new)):
        if key not in new:
            rows.append((*key, old[key][0], None, None, "missing now"))
            continue
        if key not in old:
            rows.append((*key, None, new[key][0], None, "new"))
            continue
        (a, direction, ours), (b, _, _) = old[key], new[key]
        change = (b - a) / a
        worse = -change * direction  # > 0: worse
        flag = ""
        if worse > threshold:
            if ours:
                flag, regressed = "REGRESSION", True
            else:
                flag = "slower (comparator)"
        rows.append((*key, a, b, change, flag))
    return rows, regressed


def render(rows, threshold):
    def num(v):
        return "-" if v is None else (f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}")

    cells = [(case, fig, num(a), num(b), "-" if c is None else f"{100 * c:+.1f}%", flag)
             for case, fig, a, b, c, flag in rows]
    head = ("case", "figure", "baseline", "now", "change", "")
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(head)]
    lines = [f"== change against the baseline (fail over {100 * threshold:g}% worse, "
             "fastnn's figures) =="]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)
