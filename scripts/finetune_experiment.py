"""Fine-tuning with few images: dsb2018-fluo without its largest group, then k images of it.

    python scripts/finetune_experiment.py [--data ../shared/data/dsb2018-fluo]
        [--out /tmp/embedseg-finetune] [--budget-minutes 85] [--ks 0,1,3,5,10]
        [--base-epochs 5 --base-steps 280] [--epochs 10 --steps 50]

What it runs, with the `embedseg` command of this checkout (``python -m embedseg_cli``):

1. The experiment groups of ``scripts/dsb_groups.py``; the largest (``tiles-256``) is the
   new domain. A folder of symlinks to the other groups' training images is prepared
   (``--crop-size 128``, as the built-in model) and trained from scratch: the base model
   (``--base-epochs`` x ``--base-steps`` batches of 4 crops, gradients over 2 batches, the
   built-in model's batches on a much shorter schedule).
2. For each k, the first k of one seeded shuffle of the group's training images (so the
   sets are nested) are prepared into a store of their own. All k images are trained on,
   and the first of them is also the validation image (as ``val/NAME-val.tif``): with one
   image ``prepare`` can hold none out, and holding one of three out would train on two.
   On each store: a fine-tuning run from the base run (``--preset finetune`` with
   ``--epochs``/``--steps``) and a run from scratch of the same batches (2 crops, no
   accumulation, the paper's learning rate 5e-4, thresholds tuned, validated once, at the
   end). At k=5, two more fine-tuning runs: ``--lr 5e-4`` and ``--train-layers decoders``.
   k=0 is the base model.
3. Each model (its best checkpoint, and then its last) predicts the group's test images
   (``predict --no-tta``) and ``evaluate`` scores them; the built-in ``dsb2018-fluo`` model
   (trained on every group) and the base model are the references.

On cores shared with other work, set ``OMP_NUM_THREADS=1`` (passed on to every command) so
that PyTorch's threads do not wait on each other: on 2 cores busy with other work, an epoch
of 50 batches took 125-155 s with two threads and 12 s with one, minutes later.

Results go to ``OUT/results.json`` and ``OUT/results.md`` after every run, so that a run
stopped by ``--budget-minutes`` (no new training starts once the time left is shorter than
the last run took) still leaves its tables. A run whose results are in ``results.json`` is
not run again; the base store and run are reused where ``OUT/base.zarr`` holds them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dsb_groups

ROOT = Path(__file__).resolve().parents[1]
EMBEDSEG = [sys.executable, "-m", "embedseg_cli"]
THRESHOLDS = (0.5, 0.7, 0.9)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(args: list[str], log: Path) -> tuple[float, str]:
    """Run ``embedseg ARGS``; return the wall time and stdout. Stderr goes to ``log``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    print("$ embedseg " + " ".join(args), flush=True)
    started = time.perf_counter()
    with log.open("w") as err:
        done = subprocess.run(
            EMBEDSEG + args, env=env, stdout=subprocess.PIPE, stderr=err, text=True, check=False
        )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        msg = f"embedseg {' '.join(args)} exited {done.returncode}: see {log}"
        raise RuntimeError(msg)
    return seconds, done.stdout


def link_pairs(names: list[str], src: Path, dst: Path, suffix: str = "") -> None:
    for sub in ("images", "masks"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
        for name in names:
            link = dst / sub / (Path(name).stem + suffix + ".tif")
            if not link.exists():
                link.symlink_to((src / sub / name).resolve())


class Experiment:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        self.results_path = self.out / "results.json"
        self.results: dict = (
            json.loads(self.results_path.read_text()) if self.results_path.exists() else {}
        )
        self.results.setdefault("runs", {})
        self.last_run_seconds = 0.0

    # -- bookkeeping --------------------------------------------------------------------
    def elapsed_min(self) -> float:
        return (time.perf_counter() - self.started) / 60

    def time_left(self, needed_s: float) -> bool:
        left = self.args.budget_minutes * 60 - (time.perf_counter() - self.started)
        return left >= needed_s

    def save(self) -> None:
        self.results_path.write_text(json.dumps(self.results, indent=2))
        (self.out / "results.md").write_text(self.markdown())

    # -- steps --------------------------------------------------------------------------
    def setup(self) -> None:
        data = self.args.data
        train_groups = dsb_groups.groups(data, "train")
        test_groups = dsb_groups.groups(data, "test")
        largest = dsb_groups.largest_group(data)
        group_train = sorted(n for n, g in train_groups.items() if g == largest)
        order = [str(n) for n in np.random.default_rng(self.args.seed).permutation(group_train)]
        self.largest, self.order = largest, order
        self.test_dir = self.out / f"test-{largest}"
        test_names = sorted(n for n, g in test_groups.items() if g == largest)
        link_pairs(test_names, data / "test", self.test_dir)
        base_names = sorted(n for n, g in train_groups.items() if g != largest)
        link_pairs(base_names, data / "train", self.out / "src-base")
        self.results["setup"] = {
            "data": str(data),
            "largest_group": largest,
            "groups": {
                g: {
                    "train": sum(v == g for v in train_groups.values()),
                    "test": sum(v == g for v in test_groups.values()),
                    "description": dsb_groups.GROUP_DESCRIPTIONS[g],
                }
                for g in dsb_groups.GROUP_DESCRIPTIONS
            },
            "base_train_images": len(base_names),
            "test_images": len(test_names),
            "order": order[: max(self.args.ks)],
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "schedule": {
                "base": f"{self.args.base_epochs} epochs x {self.args.base_steps} batches "
                "of 4 crops (128x128), gradients over 2 batches, lr 5e-4",
                "k": f"{self.args.epochs} epochs x {self.args.steps} batches of 2 crops",
            },
        }
        self.save()

    def base(self) -> None:
        store = self.out / "base.zarr"
        summary = self.out / "base.json"
        if not store.exists():
            run(
                ["prepare", str(self.out / "src-base"), "--out", str(store), "--crop-size", "128"],
                self.out / "base-prepare.log",
            )
        if not summary.exists():
            _, stdout = run(
                [
                    "train", str(store), "--epochs", str(self.args.base_epochs),
                    "--steps-per-epoch", str(self.args.base_steps), "--batch-size", "4",
                    "--virtual-batch-multiplier", "2", "--tune-thresholds", "--workers", "1",
                    "--run", "base", "--json",
                ],
                self.out / "base.log",
            )  # fmt: skip
            summary.write_text(stdout)
        report = json.loads(summary.read_text())
        self.results["base"] = {
            "train_seconds": report["seconds"],
            "best_epoch": report["best_epoch"],
            "best_val_ap50": report["best_val_ap50"],
            "foreground_threshold": report["foreground_threshold"],
            "history": report["history"],
        }
        self.save()

    def k_store(self, k: int) -> Path:
        store = self.out / f"k{k}.zarr"
        if store.exists():
            return store
        names = self.order[:k]
        src = self.out / f"src-k{k}"
        link_pairs(names, self.args.data / "train", src / "train")
        link_pairs(names[:1], self.args.data / "train", src / "val", suffix="-val")
        run(
            ["prepare", str(src), "--out", str(store), "--crop-size", "128"],
            self.out / f"k{k}-prepare.log",
        )
        return store

    def evaluate(self, key: str, model: list[str]) -> dict:
        pred = self.out / "pred" / key
        seconds, _ = run(
            ["predict", str(self.test_dir / "images"), *model, "--no-tta", "--out", str(pred),
             "--overwrite"],
            self.out / f"predict-{key}.log",
        )  # fmt: skip
        _, stdout = run(
            ["evaluate", str(pred), str(self.test_dir / "masks"), "--json"],
            self.out / f"evaluate-{key}.log",
        )
        report = json.loads(stdout)

        def at(rows: list[dict]) -> dict[str, float]:
            return {
                str(t): next(r["ap_dsb"] for r in rows if abs(r["threshold"] - t) < 1e-9)
                for t in THRESHOLDS
            }

        return {
            "pooled": at(report["pooled"]),
            "per_image": at(report["per_image"]),
            "predict_seconds": round(seconds, 1),
        }

    def reference(self, key: str, model: list[str]) -> None:
        if key in self.results["runs"]:
            return
        self.results["runs"][key] = self.evaluate(key, model)
        self.save()

    def train_k(self, key: str, k: int, extra: list[str]) -> None:
        if key in self.results["runs"]:
            return
        estimate = self.last_run_seconds * 1.1
        if not self.time_left(estimate):
            print(f"skipped {key}: {self.elapsed_min():.1f} min spent", flush=True)
            skipped = self.results.setdefault("skipped", [])
            if key not in skipped:
                skipped.append(key)
            self.save()
            return
        started = time.perf_counter()
        store = self.k_store(k)
        seconds, stdout = run(
            ["train", str(store), "--epochs", str(self.args.epochs), "--steps-per-epoch",
             str(self.args.steps), "--workers", "1", "--run", key, "--overwrite", "--json", *extra],
            self.out / f"train-{key}.log",
        )  # fmt: skip
        report = json.loads(stdout)
        result = self.evaluate(key, ["--model", str(store), "--run", key])
        result.update(
            k=k,
            args=extra,
            train_wall_seconds=round(seconds, 1),
            best_epoch=report["best_epoch"],
            best_val_ap50=report["best_val_ap50"],
            foreground_threshold=report["foreground_threshold"],
            val_ap50=[e.get("val_ap50") for e in report["history"]],
        )
        self.results["runs"][key] = result
        self.last_run_seconds = time.perf_counter() - started
        self.save()

    # -- tables -------------------------------------------------------------------------
    def markdown(self) -> str:
        runs = self.results.get("runs", {})
        setup = self.results.get("setup", {})

        def aps(r: dict | None) -> str:
            if r is None:
                return "not run | | "
            return " | ".join(f"{r['pooled'][str(t)]:.3f}" for t in THRESHOLDS)

        def wall(r: dict | None) -> str:
            return (
                ""
                if r is None or "train_wall_seconds" not in r
                else f"{r['train_wall_seconds']:.0f}"
            )

        lines = [
            (
                f"Group `{setup.get('largest_group')}`, {setup.get('test_images')} test "
                f"images; AP_dsb pooled, no TTA; CPU: {setup.get('cpu')}, "
                f"{setup.get('cores')} cores."
            ),
            "",
            "| k | fine-tuned 0.5 | 0.7 | 0.9 | train s | from scratch 0.5 | 0.7 | 0.9 | train s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for k in self.args.ks:
            if k == 0:
                base_s = self.results.get("base", {}).get("train_seconds")
                base_s = "" if base_s is None else f"{base_s:.0f}"
                lines.append(f"| 0 (base model) | {aps(runs.get('base'))} | {base_s} | | | | |")
                continue
            ft, sc = runs.get(f"k{k}-ft"), runs.get(f"k{k}-scratch")
            lines.append(f"| {k} | {aps(ft)} | {wall(ft)} | {aps(sc)} | {wall(sc)} |")
        lines += [
            "",
            "| reference | 0.5 | 0.7 | 0.9 |",
            "|---|---|---|---|",
            f"| built-in `dsb2018-fluo` (all groups) | {aps(runs.get('builtin'))} |",
            f"| base model (other groups only) | {aps(runs.get('base'))} |",
            "",
            "| k=5, fine-tuning | 0.5 | 0.7 | 0.9 | train s | best epoch (val AP@0.5) |",
            "|---|---|---|---|---|---|",
        ]
        for key, label in (
            ("k5-ft", "lr 1e-4, all layers"),
            ("k5-ft-lr5e-4", "lr 5e-4, all layers"),
            ("k5-ft-decoders", "lr 1e-4, decoders"),
        ):
            r = runs.get(key)
            best = "" if r is None else f"{r['best_epoch']} ({r['best_val_ap50']:.3f})"
            lines.append(f"| {label} | {aps(r)} | {wall(r)} | {best} |")
        lines += [
            "",
            "| run | best checkpoint 0.5 | 0.7 | 0.9 | last checkpoint 0.5 | 0.7 | 0.9 |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, r in runs.items():
            if "last" in r:
                lines.append(f"| {key} | {aps(r)} | {aps(r['last'])} |")
        return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=dsb_groups.DEFAULT_ROOT)
    parser.add_argument("--out", type=Path, default=Path("/tmp/embedseg-finetune"))
    parser.add_argument("--budget-minutes", type=float, default=85.0)
    parser.add_argument(
        "--ks", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 3, 5, 10]
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the order of the k images")
    parser.add_argument("--base-epochs", type=int, default=5)
    parser.add_argument("--base-steps", type=int, default=280)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of each run on k images")
    parser.add_argument("--steps", type=int, default=50, help="batches per epoch of those runs")
    args = parser.parse_args(argv)
    if not (args.data / "train" / "images").is_dir():
        print(f"no dsb2018-fluo data at {args.data}", file=sys.stderr)
        return 1

    exp = Experiment(args)
    exp.setup()
    exp.base()
    base = ["--from", str(args.out / "base.zarr"), "--from-run", "base", "--preset", "finetune"]
    # A run from scratch validates once, at the end: its best checkpoint is its last.
    scratch = [
        "--batch-size", "2", "--virtual-batch-multiplier", "1", "--tune-thresholds",
        "--validate-every", str(args.epochs),
    ]  # fmt: skip
    exp.reference("base", ["--model", str(args.out / "base.zarr"), "--run", "base"])
    exp.reference("builtin", ["--model", "dsb2018-fluo"])
    # The preset comparison first, then the fine-tuned runs of the other k (the ends of
    # the curve first), then the runs from scratch (whose first epochs are the slowest):
    # what the budget cuts is at the end.
    others = sorted((k for k in args.ks if k not in (0, 5)), key=lambda k: (k != 1, -k))
    plan: list[tuple[str, int, list[str]]] = []
    if 5 in args.ks:
        plan += [
            ("k5-ft", 5, base),
            ("k5-ft-lr5e-4", 5, [*base, "--lr", "5e-4"]),
            ("k5-ft-decoders", 5, [*base, "--train-layers", "decoders"]),
        ]
    plan += [(f"k{k}-ft", k, base) for k in others]
    plan += [(f"k{k}-scratch", k, scratch) for k in sorted(args.ks) if k != 0]
    for key, k, extra in plan:
        exp.train_k(key, k, extra)
    # The best checkpoint is chosen on one validation image, whose AP saturates within a few
    # epochs (a tie keeps the earlier epoch): the last checkpoint shows what the whole
    # schedule reached.
    for key, k, _ in plan:
        result = exp.results["runs"].get(key)
        if result is not None and "last" not in result:
            model = ["--model", str(args.out / f"k{k}.zarr"), "--run", key]
            result["last"] = exp.evaluate(f"{key}-last", [*model, "--checkpoint", "last"])
            exp.save()
    print(exp.markdown())
    print(f"total {exp.elapsed_min():.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
