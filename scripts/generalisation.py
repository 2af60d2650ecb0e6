"""Objects of another size than the training data's: AP with and without ``--object-size auto``.

    python scripts/generalisation.py [--model dsb2018-fluo] \
        [--test ../shared/data/dsb2018-fluo/test] [--scales 0.5 1 2] [--tta] [--json FILE]

The test images are resampled by each scale (images linearly, smoothed against aliasing where
downsampled, with the resampling ``prepare --downsample`` and ``predict`` use; masks by the
nearest pixel) and predicted with ``--object-size off`` and ``--object-size auto`` (no
test-time augmentation; ``--tta`` adds a run with it at scale 1); ``--settings true`` gives
each image the true median diameter of its mask instead, the best an estimate could do.
For each run it reports AP_dsb per image at IoU 0.5, 0.7 and 0.9 and the time taken.

It also validates the estimates of each image's median object diameter against the true
median (of the resampled masks): that of ``auto`` (the network, see
``embedseg_cli.predict.objectsize``), and a classical one for comparison (Otsu foreground,
then twice the median height of the distance-transform maxima: the diameter of the largest
disk inside each blob). The ratio estimate / true is given as its median, quartiles and
10th to 90th percentile over the images.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from numpy.typing import NDArray
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu

from embedseg_cli.blockwise.resample import resample_piece
from embedseg_cli.config import EvaluateConfig, PredictConfig
from embedseg_cli.data.diameters import equivalent_diameters
from embedseg_cli.evaluate import evaluate
from embedseg_cli.io.tiff import list_tiffs, read_tiff
from embedseg_cli.predict import predict

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = (0.5, 0.7, 0.9)


def resampled(array: NDArray[Any], scale: float, order: int) -> NDArray[Any]:
    """``array`` (2D) resampled by ``scale`` on the project's resampling path."""
    if scale == 1:
        return array
    shape = tuple(max(1, round(n * scale)) for n in array.shape)
    factors = tuple(n / m for n, m in zip(array.shape, shape, strict=True))
    source = array.astype(np.float32) if order else array
    return resample_piece(source, (0, 0), shape, (0, 0), factors, order)


def true_diameter(labels: NDArray[Any]) -> float:
    sizes = np.bincount(labels.ravel())[1:]
    return float(np.median(equivalent_diameters(sizes[sizes > 0], 2)))


def classical_diameter(image: NDArray[Any]) -> float | None:
    """Twice the median distance-transform maximum of an Otsu foreground."""
    smooth = ndimage.gaussian_filter(image.astype(np.float32), 1)
    foreground = smooth > threshold_otsu(smooth)
    distance = ndimage.distance_transform_edt(foreground)
    blobs, _ = ndimage.label(foreground)
    peaks = peak_local_max(distance, min_distance=2, threshold_abs=1.5, labels=blobs)
    return float(2 * np.median(distance[tuple(peaks.T)])) if len(peaks) else None


def ratio_summary(estimates: list[float | None], truths: list[float]) -> dict[str, Any]:
    found = [(e, t) for e, t in zip(estimates, truths, strict=True) if e is not None]
    ratios = np.array([e / t for e, t in found])
    if not len(ratios):
        return {"n": 0, "missing": len(truths)}
    q10, q25, q50, q75, q90 = np.percentile(ratios, [10, 25, 50, 75, 90])
    within = float(np.mean(np.abs(np.log(ratios)) <= np.log(1.25)))
    return {
        "n": len(ratios),
        "missing": len(truths) - len(ratios),
        "median": round(float(q50), 3),
        "quartiles": [round(float(q25), 3), round(float(q75), 3)],
        "p10_p90": [round(float(q10), 3), round(float(q90), 3)],
        "within_25_percent": round(within, 3),
    }


def write_scaled(
    test: Path, scale: float, folder: Path, limit: int | None
) -> dict[str, dict[str, Any]]:
    """The test pairs resampled by ``scale`` into ``folder``; per image its truths."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    masks = list_tiffs(test / "masks")
    images: dict[str, dict[str, Any]] = {}
    for name, path in list(list_tiffs(test / "images").items())[:limit]:
        image = read_tiff(path).data
        if image.ndim == 3:  # RGB(A) nuclei images: their first channel
            image = image[..., 0] if image.shape[-1] <= 4 else image[0]
        image = resampled(image, scale, 1)
        mask = resampled(read_tiff(masks[name]).data, scale, 0)
        tifffile.imwrite(folder / "images" / f"{name}.tif", image)
        tifffile.imwrite(folder / "masks" / f"{name}.tif", mask)
        images[name] = {
            "shape": list(mask.shape),
            "true_diameter": round(true_diameter(mask), 3),
            "classical_diameter": classical_diameter(image),
        }
    return images


def run(
    folder: Path, out: Path, model: str, object_size: str, tta: bool, truths: dict[str, float]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Predict and score the folder; ``object_size`` "true" gives each image its true size."""
    started = time.perf_counter()
    options = {"model": model, "tta": tta, "device": "auto"}
    sizes = {}
    if object_size == "true":
        out.mkdir()
        for name, diameter in truths.items():
            report = predict(
                PredictConfig(
                    input=folder / "images" / f"{name}.tif",
                    out=out / f"{name}.tif",
                    object_size=diameter,
                    **options,
                )
            )
            sizes.update(report.object_sizes)
    else:
        report = predict(
            PredictConfig(input=folder / "images", out=out, object_size=object_size, **options)
        )
        sizes = report.object_sizes
    seconds = time.perf_counter() - started
    scores = evaluate(
        EvaluateConfig(prediction=out, ground_truth=folder / "masks", thresholds=THRESHOLDS)
    )
    per_image = {image.name: [round(s.ap_dsb, 4) for s in image.stats] for image in scores.images}
    summary = {
        "object_size": object_size,
        "tta": tta,
        "ap_dsb": [round(s.ap_dsb, 4) for s in scores.scores.per_image],
        "seconds": round(seconds, 1),
    }
    return summary, {
        name: {
            "ap_dsb": per_image[name],
            **{k: v for k, v in scale.as_dict().items() if k != "training_diameter"},
        }
        for name, scale in sizes.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dsb2018-fluo")
    parser.add_argument(
        "--test", type=Path, default=ROOT.parent / "shared" / "data" / "dsb2018-fluo" / "test"
    )
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument(
        "--settings",
        nargs="+",
        default=["off", "auto"],
        help="object sizes to compare: off, auto, a diameter, or true (each image its true "
        "median diameter, predicted one by one: the best an estimate can do)",
    )
    parser.add_argument("--tta", action="store_true", help="also predict scale 1 with TTA")
    parser.add_argument("--limit", type=int, help="only the first N test images (a quick look)")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "generalisation.json"
    )
    args = parser.parse_args()
    if not (args.test / "images").is_dir():
        raise SystemExit(f"{args.test} has no images/: give --test (the data is not shipped)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    results: dict[str, Any] = {"model": args.model, "test": str(args.test), "runs": []}
    with tempfile.TemporaryDirectory() as scratch:
        for scale in args.scales:
            folder = Path(scratch) / f"x{scale:g}"
            images = write_scaled(args.test, scale, folder, args.limit)
            runs = [(setting, False) for setting in args.settings]
            if args.tta and scale == 1:
                runs += [(setting, True) for setting in args.settings]
            for setting, tta in runs:
                out = folder / f"{setting}-{'tta' if tta else 'plain'}"
                truths = {name: values["true_diameter"] for name, values in images.items()}
                summary, per_image = run(folder, out, args.model, setting, tta, truths)
                for name, values in per_image.items():
                    images[name][f"{setting}{'-tta' if tta else ''}"] = values
                results["runs"].append({"scale": scale, **summary})
                print(json.dumps(results["runs"][-1]), flush=True)
            truths = [images[n]["true_diameter"] for n in images]
            estimates: dict[str, Any] = {
                "classical": ratio_summary(
                    [images[n]["classical_diameter"] for n in images], truths
                )
            }
            if "auto" in args.settings:
                estimates["network"] = ratio_summary(
                    [images[n]["auto"]["diameter"] for n in images], truths
                )
            results.setdefault("estimates", {})[f"{scale:g}"] = estimates
            results.setdefault("images", {})[f"{scale:g}"] = images
            print(json.dumps({"scale": scale, "estimates": estimates}), flush=True)
    print()
    print("| scale | object size | TTA | AP@0.5 | AP@0.7 | AP@0.9 | seconds |")
    print("|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        ap = " | ".join(f"{v:.3f}" for v in r["ap_dsb"])
        tta = "yes" if r["tta"] else "no"
        print(f"| {r['scale']:g}x | {r['object_size']} | {tta} | {ap} | {r['seconds']:.0f} |")
    print()
    print("| scale | estimator | median ratio | quartiles | 10-90% | within 25% | missing |")
    print("|---|---|---|---|---|---|---|")
    for scale, found in results.get("estimates", {}).items():
        for name, e in found.items():
            if not e["n"]:
                continue
            q, p = e["quartiles"], e["p10_p90"]
            print(
                f"| {scale}x | {name} | {e['median']:.2f} | {q[0]:.2f}-{q[1]:.2f} | "
                f"{p[0]:.2f}-{p[1]:.2f} | {e['within_25_percent']:.0%} | {e['missing']} |"
            )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    print(f"\nwritten {args.json}")


if __name__ == "__main__":
    main()
