"""Run the benchmarks: ``nox -s bench`` (or ``python benchmarks/run.py [--quick]``).

Each case runs in a fresh process, so that its peak memory is its own. Results go to
``benchmarks/results/bench-<time>.json`` and a Markdown table beside it, and the table is
printed. Cases that need ``../shared/data`` are skipped, with the reason, where it is absent.
Speed claims are ratios measured in the same run: this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# (module in benchmarks/, case name, in the quick subset)
CASES: list[tuple[str, str, bool]] = [
    ("bench_prepare", "medoid_11k", True),
    ("bench_prepare", "prepare_dsb2018", False),
    ("bench_prepare", "prepare_usiigaci", False),
    ("bench_evaluate", "evaluate_dsb2018_test", True),
    ("bench_evaluate", "evaluate_3d_512", False),
    ("bench_clustering", "clustering", True),
    ("bench_train", "train_step_2d", True),
    ("bench_train", "train_step_3d", True),
    ("bench_predict", "predict_throughput", True),
    ("bench_predict", "predict_memory_scaling", False),
]


def _run_case(module: str, case: str, quick: bool) -> list[dict[str, Any]]:
    import resource

    sys.path.insert(0, str(HERE))
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    started = time.perf_counter()
    function = getattr(importlib.import_module(module), case)
    rows: list[dict[str, Any]] = function(quick=quick)
    for row in rows:
        row.setdefault("case", case)
        row["process_peak_rss_mb"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
        )
        row["wall_s"] = round(time.perf_counter() - started, 2)
    return rows


def _markdown(rows: list[dict[str, Any]]) -> str:
    header = ["| case | result | seconds | peak RSS (MB) | notes |", "|---|---|---|---|---|"]
    body = [
        f"| {row.get('case')} | {row.get('result', '')} | {row.get('seconds', '')} | "
        f"{row.get('evaluate_peak_rss_mb', row.get('process_peak_rss_mb', ''))} | "
        f"{row.get('notes', '')} |"
        for row in rows
    ]
    return "\n".join(header + body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the fast subset (< 5 min)")
    parser.add_argument("--only", nargs="*", help="case names to run")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    context = multiprocessing.get_context("spawn")
    for module, case, in_quick in CASES:
        if (args.quick and not in_quick) or (args.only and case not in args.only):
            continue
        print(f"running {case} ...", file=sys.stderr, flush=True)
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            try:
                rows.extend(pool.submit(_run_case, module, case, args.quick).result())
            except Exception as exc:  # noqa: BLE001 (a failed case is reported, others go on)
                rows.append({"case": case, "result": "FAILED", "notes": repr(exc)})
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "quick": args.quick,
        "cases": rows,
    }
    (RESULTS / f"bench-{stamp}.json").write_text(json.dumps(report, indent=2))
    table = _markdown(rows)
    (RESULTS / f"bench-{stamp}.md").write_text(table + "\n")
    print(table)
    print(f"\nwrote {RESULTS / f'bench-{stamp}.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
