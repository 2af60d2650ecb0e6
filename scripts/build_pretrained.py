"""Package a trained run as a built-in model, with its AP measured on held-out test images.

    python scripts/build_pretrained.py STORE --run RUN --test ../shared/data/dsb2018-fluo/test \
        --name dsb2018-fluo --training-command "embedseg train ..."

Predicts the test images (with and without test-time augmentation) from the run's best
checkpoint, evaluates them against the test masks, and writes
``embedseg_cli/pretrained/NAME.npz``: float16 weights, the checkpoint's attributes and
what ``embedseg models`` shows (training data, license, the AP tables, the command).
The labels are then predicted again from the written file, so the AP shipped is the AP of
the float16 weights.

The data properties are the store's; where the store was prepared before the median object
diameter was measured, ``--masks`` measures it (with its quartiles) on the training masks,
as ``prepare`` does. A built-in file already written gets them without training or
predicting again:

    python scripts/build_pretrained.py --update-object-size embedseg_cli/pretrained/NAME.npz \
        --masks ../shared/data/dsb2018-fluo/train/masks
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np

from embedseg_cli.config import EvaluateConfig, PredictConfig
from embedseg_cli.data.diameters import diameter_statistics
from embedseg_cli.data.labels import as_labels
from embedseg_cli.evaluate import evaluate
from embedseg_cli.io.models import TrainedModel, read_compact, read_model, write_compact
from embedseg_cli.io.tiff import list_tiffs, read_tiff
from embedseg_cli.predict import predict

PACKAGE = Path(__file__).resolve().parents[1] / "embedseg_cli" / "pretrained"


def _scores(model: str, test: Path, tta: bool, folder: Path) -> dict[str, list[float]]:
    out = folder / ("tta" if tta else "plain")
    # At the images' own scale: the scores of the network, not of --object-size.
    config = PredictConfig(
        input=test / "images", model=model, out=out, tta=tta, device="cpu", object_size="off"
    )
    predict(config)
    report = evaluate(EvaluateConfig(prediction=out, ground_truth=test / "masks"))
    return {
        "thresholds": list(report.scores.thresholds),
        "per_image": [round(s.ap_dsb, 4) for s in report.scores.per_image],
        "pooled": [round(s.ap_dsb, 4) for s in report.scores.pooled],
    }


def object_size(masks: Path, ndim: int, anisotropy: float) -> dict[str, object]:
    """Median and quartiles of the objects' equivalent diameters in a folder of masks."""
    sizes = []
    for name, path in list_tiffs(masks).items():
        labels = as_labels(read_tiff(path).data, name, ndim=ndim)
        counts = np.bincount(labels.ravel())[1:]
        sizes.append(counts[counts > 0])
    measured = diameter_statistics(np.concatenate(sizes), ndim, anisotropy)
    if measured is None:
        raise SystemExit(f"{masks} holds no objects")
    median, quartiles = measured
    print(
        f"{masks}: {sum(map(len, sizes))} objects, median diameter {median} px, "
        f"quartiles {quartiles}"
    )
    return {"median_diameter": median, "diameter_quartiles": list(quartiles)}


def with_object_size(model: TrainedModel, masks: Path) -> TrainedModel:
    data = model.attrs["data"]
    size = object_size(masks, int(data["ndim"]), float(data["anisotropy"]))
    attrs = {**model.attrs, "data": {**data, **size}}
    return dataclasses.replace(model, attrs=attrs)


def update_object_size(path: Path, masks: Path) -> None:
    """Write the training masks' object size into a built-in file, keeping all else."""
    model = with_object_size(read_compact(path), masks)
    write_compact(model, path)
    print(json.dumps({"file": str(path), "data": model.attrs["data"]}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path, nargs="?")
    parser.add_argument("--run")
    parser.add_argument("--test", type=Path, help="folder with images/ and masks/")
    parser.add_argument("--name")
    parser.add_argument(
        "--masks", type=Path, help="the training masks (train and val), to measure object size"
    )
    parser.add_argument(
        "--update-object-size",
        type=Path,
        metavar="FILE.npz",
        help="only write the object size measured on --masks into this built-in file",
    )
    parser.add_argument("--description", default="2D fluorescence nuclei (single channel)")
    parser.add_argument(
        "--training-data", default="dsb2018-fluo/train (Kaggle DSB 2018, stage 1 fluorescence)"
    )
    parser.add_argument("--license", default="data CC0; weights CC0")
    parser.add_argument("--training-command", default="")
    args = parser.parse_args()
    if args.update_object_size is not None:
        if args.masks is None:
            parser.error("--update-object-size needs --masks")
        update_object_size(args.update_object_size, args.masks)
        return
    if args.store is None or args.run is None or args.test is None or args.name is None:
        parser.error("give STORE, --run, --test and --name")
    trained = read_model(args.store, run=args.run)
    if args.masks is not None and trained.record.data.median_diameter is None:
        trained = with_object_size(trained, args.masks)
    PACKAGE.mkdir(exist_ok=True)
    target = PACKAGE / f"{args.name}.npz"
    meta = {
        "description": args.description,
        "training_data": args.training_data,
        "license": args.license,
        "training_command": args.training_command,
        "epochs": trained.attrs.get("epoch", 0) + 1,
        "best_val_ap50": trained.attrs.get("best_ap"),
    }
    write_compact(trained, target, **meta)
    with tempfile.TemporaryDirectory() as folder:
        tta = _scores(str(target), args.test, True, Path(folder))
        plain = _scores(str(target), args.test, False, Path(folder))
    scores = {
        "ap50_tta": tta["per_image"][0],
        "ap50": plain["per_image"][0],
        "tta": tta,
        "no_tta": plain,
    }
    write_compact(trained, target, **meta, scores=scores)
    print(json.dumps({"file": str(target), "bytes": target.stat().st_size, **scores}, indent=1))


if __name__ == "__main__":
    main()
