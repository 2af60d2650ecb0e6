"""What limits a 2D model's accuracy: clustering thresholds, and recall by object size.

    python scripts/accuracy_ablations.py MODEL --val VAL --test TEST_DIR [--json FILE]

    python scripts/accuracy_ablations.py dsb2018-fluo --val dsb.zarr \
        --test ../shared/data/dsb2018-fluo/test

MODEL is anything ``--model`` takes (a store, an exported model, ``dsb2018-fluo``); VAL is a
project store (its validation images) or, like TEST_DIR, a folder of ``images/`` and
``masks/`` TIFF pairs. The network runs once per image
(no test-time augmentation, whole image); the raw outputs are then clustered with each pair
of foreground and seed thresholds, and AP_dsb per image is reported at IoU 0.5 to 0.9.
Recall at IoU 0.5 is reported by the area of the true objects, with the model's own
thresholds, and the worst test images are listed.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from embedseg_cli.data.matching import matched_pairs
from embedseg_cli.data.metrics import evaluate_image
from embedseg_cli.data.normalise import normalise
from embedseg_cli.data.overlap import compute_overlap
from embedseg_cli.io.models import load_network, read_model
from embedseg_cli.io.store import ProjectStore, is_project_store
from embedseg_cli.io.tiff import read_tiff
from embedseg_cli.method.inference import ClusterThresholds, predict_raw, segment

IOU = (0.5, 0.6, 0.7, 0.8, 0.9)
AREAS = (0, 100, 300, 1000, np.inf)


def _pairs(folder: Path) -> list[tuple[str, NDArray[Any], NDArray[Any]]]:
    """(name, image, true labels) of a folder of images/ and masks/, or a store's val split."""
    if is_project_store(folder):
        store = ProjectStore.open(folder)
        return [
            (r.name, np.asarray(store.image(r.name)[...]), np.asarray(store.mask(r.name)[...]))
            for r in store.images("val")
        ]
    return [
        (path.stem, read_tiff(path).data, read_tiff(folder / "masks" / path.name).data)
        for path in sorted((folder / "images").glob("*.tif"))
    ]


def _raw_outputs(network: torch.nn.Module, folder: Path) -> list[tuple[str, torch.Tensor, Any]]:
    """Raw outputs and true labels of every image, normalised as predict does."""
    items = []
    for name, pixels, truth in _pairs(folder):
        image = np.asarray(pixels)
        if image.ndim == 3:
            image = image[..., 0] if image.shape[-1] <= 4 else image[0]
        low, high = np.percentile(image, [1.0, 99.8])
        tensor = torch.from_numpy(normalise(image, ((low, high),), channel_axis=None))[None]
        with torch.no_grad():
            raw = predict_raw(network, tensor, 2)
        items.append((name, raw, truth))
    return items


def _labels(raw: torch.Tensor, scale: float, thresholds: ClusterThresholds) -> NDArray[Any]:
    return segment(
        raw, 2, origin=(0, 0), spacing=(1.0, 1.0), scale=scale, thresholds=thresholds
    ).labels


def _ap(items: list[Any], scale: float, thresholds: ClusterThresholds) -> list[float]:
    scores = []
    for _, raw, truth in items:
        stats = evaluate_image(truth, _labels(raw, scale, thresholds), IOU)
        scores.append([s.tp / max(s.tp + s.fp + s.fn, 1) for s in stats])
    return [round(float(x), 3) for x in np.mean(scores, axis=0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--val", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model = read_model(args.model)
    network = load_network(model, torch.device("cpu")).eval()
    scale = float(model.attrs["model"]["embedding_scale"])
    own = model.attrs["thresholds"]
    min_size = int(own["min_object_size"])
    sets = {"val": _raw_outputs(network, args.val), "test": _raw_outputs(network, args.test)}

    sweep = []
    print("foreground seed | AP_dsb per image at IoU " + " ".join(map(str, IOU)))
    for foreground, seed in itertools.product(
        (0.2, 0.3, 0.4, 0.5, 0.6), (0.5, 0.7, 0.8, 0.9, 0.93, 0.95)
    ):
        if seed < foreground:
            continue
        thresholds = ClusterThresholds(foreground, seed, min_size)
        row = {"foreground": foreground, "seed": seed}
        row.update({name: _ap(items, scale, thresholds) for name, items in sets.items()})
        sweep.append(row)
        print(f"{foreground:>10} {seed:>4} | val {row['val']} | test {row['test']}", flush=True)

    thresholds = ClusterThresholds(float(own["foreground"]), 0.9, min_size)
    found, total = np.zeros(len(AREAS) - 1), np.zeros(len(AREAS) - 1)
    images = []
    for name, raw, truth in sets["test"]:
        labels = _labels(raw, scale, thresholds)
        matched = set(matched_pairs(compute_overlap(truth, labels), 0.5)[0].tolist())
        areas = np.bincount(np.asarray(truth).ravel())
        objects = [int(i) for i in np.flatnonzero(areas) if i > 0]
        for label in objects:
            bucket = int(np.searchsorted(AREAS, areas[label], side="right")) - 1
            total[bucket] += 1
            found[bucket] += label in matched
        stats = evaluate_image(truth, labels, (0.5,))[0]
        ap = stats.tp / max(stats.tp + stats.fp + stats.fn, 1)
        images.append(
            {
                "image": name,
                "ap50": round(ap, 3),
                "objects": len(objects),
                "median_area": int(np.median(areas[objects])) if objects else 0,
            }
        )
    recall = [
        {
            "area": f"{AREAS[i]:g}-{AREAS[i + 1]:g}",
            "objects": int(total[i]),
            "recall50": round(float(found[i] / max(total[i], 1)), 3),
        }
        for i in range(len(AREAS) - 1)
    ]
    images.sort(key=lambda row: row["ap50"])
    print("recall at IoU 0.5 by true area (px):", json.dumps(recall))
    print("worst test images:", json.dumps(images[:6]))
    if args.json:
        args.json.write_text(
            json.dumps({"sweep": sweep, "recall": recall, "images": images}, indent=1)
        )


if __name__ == "__main__":
    main()
