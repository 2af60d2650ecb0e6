"""Run the benchmarks: ``nox -s bench`` (or ``python benchmarks/run.py [--quick]``).

Each case runs in a fresh process, so that its peak memory is its own. Results go to
``benchmarks/results/bench-<time>.json`` and a Markdown table beside it, and the table is
printed. Cases that need ``../shared/data`` are skipped, with the reason, where it is absent.
Speed claims are ratios measured in the same run: this machine is shared and noisy.

After our cases, the original implementation (``embedseg==0.2.5``) runs its counterparts of
the selected cases (``original/bench_original.py``, in the venv that ``original/setup_env.py``
builds on first use) and each of our rows that has one gets ``original_s`` and
``ours_over_original`` (our seconds divided by its seconds). ``--no-original`` skips this.
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import os
import platform
import subprocess
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
    ("bench_predict", "predict_trained_2d", True),
    ("bench_predict", "predict_memory_scaling", False),
]
# Our cases that original/bench_original.py has counterparts for.
ORIGINAL_CASES = {
    "medoid_11k",
    "clustering",
    "train_step_2d",
    "train_step_3d",
    "predict_throughput",
}


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


def _run_original(cases: list[str], quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of the original's counterparts of ``cases``, and how they were obtained."""
    from original import setup_env

    try:
        python = setup_env.ensure()
    except setup_env.SetupError as exc:
        return [], {"skipped": str(exc)}
    threads = os.environ.get("OMP_NUM_THREADS", "2")
    command = [str(python), str(HERE / "original" / "bench_original.py"), "--only", *cases]
    if quick:
        command.append("--quick")
    done = subprocess.run(
        command,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": threads},
        check=False,
    )
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    info: dict[str, Any] = {
        "package": setup_env.EMBEDSEG,
        "python": str(python),
        "threads": threads,
    }
    if done.returncode != 0:
        info["error"] = f"bench_original.py exited with status {done.returncode}"
    return rows, info


def _pair(rows: list[dict[str, Any]], original: list[dict[str, Any]]) -> None:
    """Add the original's time and the ratio ours / original to each row with a counterpart."""
    by_case = {row["case"]: row for row in original}
    for row in rows:
        match = by_case.get(row.get("case"))
        if match is None:
            continue
        if "seconds" not in match:
            row["original_s"] = match.get("result", "FAILED")
            row["original_notes"] = match.get("notes", "")
            continue
        row["original_s"] = match["seconds"]
        row["original_peak_rss_mb"] = match.get("peak_rss_mb")
        if isinstance(row.get("seconds"), int | float) and match["seconds"] > 0:
            row["ours_over_original"] = round(row["seconds"] / match["seconds"], 5)


def _ratio(row: dict[str, Any]) -> str:
    ratio = row.get("ours_over_original")
    return "" if ratio is None else f"{ratio:.3g}"


def _markdown(rows: list[dict[str, Any]]) -> str:
    header = [
        (
            "| case | result | seconds | original s | ours / original | peak RSS (MB) "
            "| original peak RSS (MB) | notes |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    body = [
        f"| {row.get('case')} | {row.get('result', '')} | {row.get('seconds', '')} | "
        f"{row.get('original_s', '')} | {_ratio(row)} | "
        f"{row.get('evaluate_peak_rss_mb', row.get('process_peak_rss_mb', ''))} | "
        f"{row.get('original_peak_rss_mb', '')} | {row.get('notes', '')} |"
        for row in rows
    ]
    return "\n".join(header + body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the fast subset (< 5 min)")
    parser.add_argument("--only", nargs="*", help="case names to run")
    parser.add_argument(
        "--no-original", action="store_true", help="do not run the original implementation"
    )
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    # Spinning OpenMP threads make torch 10-80x slower when another process holds a core of
    # this shared machine; passive waiting keeps both implementations near their 1-core speed.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    ran: list[str] = []
    context = multiprocessing.get_context("spawn")
    for module, case, in_quick in CASES:
        if (args.quick and not in_quick) or (args.only and case not in args.only):
            continue
        ran.append(case)
        print(f"running {case} ...", file=sys.stderr, flush=True)
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            try:
                rows.extend(pool.submit(_run_case, module, case, args.quick).result())
            except Exception as exc:  # noqa: BLE001 (a failed case is reported, others go on)
                rows.append({"case": case, "result": "FAILED", "notes": repr(exc)})
    original: dict[str, Any] = {"skipped": "--no-original"}
    paired = [case for case in ran if case in ORIGINAL_CASES]
    if not args.no_original and paired:
        print("running the original implementation ...", file=sys.stderr, flush=True)
        original_rows, original = _run_original(paired, args.quick)
        if "skipped" in original:
            print(f"original implementation not run: {original['skipped']}", file=sys.stderr)
        _pair(rows, original_rows)
        original["cases"] = original_rows
    elif not paired:
        original = {"skipped": "no selected case has a counterpart"}
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "omp_num_threads": os.environ["OMP_NUM_THREADS"],
            "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "quick": args.quick,
        "cases": rows,
        "original": original,
    }
    (RESULTS / f"bench-{stamp}.json").write_text(json.dumps(report, indent=2))
    machine = report["machine"]
    table = _markdown(rows) + (
        f"\n\nOMP_NUM_THREADS={machine['omp_num_threads']}, "
        f"OMP_WAIT_POLICY={machine['omp_wait_policy']}; 1-minute load average "
        f"{machine['load_average_before'][0]} before, {machine['load_average_after'][0]} after"
    )
    if "skipped" in original:
        table += f"; original not run: {original['skipped']}"
    (RESULTS / f"bench-{stamp}.md").write_text(table + "\n")
    print(table)
    print(f"\nwrote {RESULTS / f'bench-{stamp}.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
