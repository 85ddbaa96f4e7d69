"""The test suite's own cost: the README's test command, whole and as the inner loop
(`-m "not slow"`), with the slowest tests named.

    python bench/bench_suite.py [--avx2] [--name suite]

--avx2 runs both under ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2, an approximation
of an AVX2-only CPU (with an empty torch.compile cache of its own: kernels cached under
another ISA are not told apart). Writes bench/results/NAME.json and regenerates
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

from common import ROOT, cpu_name, machine, save
from report import render

SUMMARY = re.compile(r"(\d+) passed(?:, (\d+) skipped)?(?:, \d+ \w+)* in ([0-9.]+)s")
DURATION = re.compile(r"^([0-9.]+)s (call|setup|teardown)\s+(\S+)")


def run_suite(extra: list[str], env: dict[str, str]) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "--durations=12", *extra],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env})
    wall = time.perf_counter() - t0
    out = p.stdout
    m = SUMMARY.search(out)
    if p.returncode != 0 or m is None:
        raise SystemExit(f"pytest {' '.join(extra)} failed (rc {p.returncode}):\n{out[-4000:]}")
    slowest = [{"seconds": float(d.group(1)), "test": d.group(3)}
               for d in map(DURATION.match, out.splitlines()) if d and d.group(2) == "call"]
    return {"args": extra, "passed": int(m.group(1)), "skipped": int(m.group(2) or 0),
            "pytest_seconds": float(m.group(3)), "wall_seconds": round(wall, 1),
            "slowest": slowest}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--avx2", action="store_true")
    ap.add_argument("--name", default="suite")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {"TORCHINDUCTOR_CACHE_DIR": f"{tmp}/inductor"}  # a cold compile, as in CI
        if a.avx2:
            env |= {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
        os.environ.update(env)  # machine() reads the cap
        rows = {"inner loop": run_suite(["-m", "not slow"], env), "full": run_suite([], env)}
    result = {"machine": machine(), "settings": vars(a), "rows": rows,
              "summary": {k: v["pytest_seconds"] for k, v in rows.items()}}
    print(save(a.name, result))
    render()


# --- its part of docs/benchmarks.md --------------------------------------------------------
def section(r: dict) -> str:
    m = r["machine"]
    cap = m.get("isa_cap")
    lines = [f"## The test suite{' capped at ' + cap if cap else ''}"
             + (f", on {cpu_name(m)}" if m.get("cpu_id") else ""), "",
             "`bench/bench_suite.py`: the README's test command (`pytest -q`) and the inner"
             " loop (`-m \"not slow\"`), each once, with an empty torch.compile cache"
             + (f", under `ONEDNN_MAX_CPU_ISA={cap}` and the matching ATEN_CPU_CAPABILITY"
                " (an approximation of such a CPU, not one)" if cap else "")
             + f". Measured {m['date']} on {cpu_name(m)} ({m.get('isa', '?')}, {m['cores']}"
             f" cores), commit {m['commit']}.", "",
             "| run | passed | skipped | pytest's wall | slowest tests (s) |",
             "|---|---:|---:|---:|---|"]
    for name, row in r["rows"].items():
        slow = ", ".join(f"{x['test'].split('::')[-1]} {x['seconds']:.0f}"
                         for x in row["slowest"][:8])
        lines.append(f"| {name} | {row['passed']} | {row['skipped']} |"
                     f" {row['pytest_seconds']:.0f} s | {slow} |")
    return "\n".join([*lines, "", ""])


def headline(r: dict) -> str:
    """The row of docs/benchmarks.md's summary table."""
    s = r.get("summary") or {}
    cap = r["machine"].get("isa_cap")
    return (f"full suite {s['full']:.0f} s, `-m \"not slow\"` {s['inner loop']:.0f} s"
            + (f" (capped at {cap})" if cap else ""))


if __name__ == "__main__":
    main()
