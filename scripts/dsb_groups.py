"""Group the dsb2018-fluo images into experiment groups by shape and intensity profile.

    python scripts/dsb_groups.py [../shared/data/dsb2018-fluo] [--json]

The data set mixes fields of view from several microscopes: small tiles of small nuclei,
square tiles of large dim nuclei, and wide fields. The groups follow from the image shape
alone, with fixed rules, so that every train and test image falls in the same group each
time; the table printed beside them (median background, the 99.8th intensity percentile,
the median object area from the masks) says what else sets each group apart:

- ``tiles-256``: tiles of at most 350 x 350 pixels (256x256, 256x320, 260x347): small
  nuclei (median object area about 150 px).
- ``square-360``: 360x360 tiles: large, dim nuclei (median area about 1,800 px, 99.8th
  percentile of intensity about 40 of 255).
- ``wide``: fields of 512 rows or more (520x696, 512x640, 603x1272, 1040x1388): medium to
  large nuclei, often many per image.

Other scripts import :func:`groups` (name -> group of each image) and :func:`describe`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

DEFAULT_ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dsb2018-fluo"

GROUP_DESCRIPTIONS = {
    "tiles-256": "tiles of at most 350x350 px, small nuclei",
    "square-360": "360x360 tiles, large dim nuclei",
    "wide": "fields of 512 rows or more, medium to large nuclei",
}


@dataclass(frozen=True)
class ImageStats:
    """What sets an image's group apart, measured on the image and its mask."""

    split: str
    name: str
    shape: tuple[int, int]
    background: float
    """Median intensity."""
    p998: float
    """99.8th intensity percentile (the top of the normalisation range)."""
    median_area: float
    """Median object area in pixels (0 for a mask without objects)."""
    objects: int


def group_of_shape(shape: Iterable[int]) -> str:
    """The experiment group of an image of this shape (rows, columns)."""
    rows, cols = tuple(shape)[:2]
    if rows <= 350 and cols <= 350:
        return "tiles-256"
    if rows == 360 and cols == 360:
        return "square-360"
    return "wide"


def image_stats(root: Path, split: str, name: str) -> ImageStats:
    image = tifffile.imread(root / split / "images" / name)
    mask = tifffile.imread(root / split / "masks" / name)
    _, areas = np.unique(mask[mask > 0], return_counts=True)
    return ImageStats(
        split=split,
        name=name,
        shape=(int(image.shape[0]), int(image.shape[1])),
        background=float(np.median(image)),
        p998=float(np.percentile(image, 99.8)),
        median_area=float(np.median(areas)) if len(areas) else 0.0,
        objects=len(areas),
    )


def _names(root: Path, split: str) -> list[str]:
    return sorted(p.name for p in (root / split / "images").glob("*.tif"))


def groups(root: Path = DEFAULT_ROOT, split: str = "train") -> dict[str, str]:
    """Each image of ``root/split`` (its file name) and its experiment group, by shape."""
    result = {}
    for name in _names(root, split):
        with tifffile.TiffFile(root / split / "images" / name) as tif:
            result[name] = group_of_shape(tif.pages[0].shape)
    return result


def largest_group(root: Path = DEFAULT_ROOT) -> str:
    """The group with the most training images."""
    counts: dict[str, int] = {}
    for group in groups(root, "train").values():
        counts[group] = counts.get(group, 0) + 1
    return max(sorted(counts), key=lambda g: counts[g])


def describe(root: Path = DEFAULT_ROOT) -> list[dict]:
    """One row per group: sizes in train and test, shapes and the medians of the statistics."""
    stats = [
        image_stats(root, split, n) for split in ("train", "test") for n in _names(root, split)
    ]
    rows = []
    for group, text in GROUP_DESCRIPTIONS.items():
        members = [s for s in stats if group_of_shape(s.shape) == group]
        shapes = sorted({s.shape for s in members})
        rows.append(
            {
                "group": group,
                "train": sum(s.split == "train" for s in members),
                "test": sum(s.split == "test" for s in members),
                "description": text,
                "shapes": ["x".join(map(str, s)) for s in shapes],
                "median_background": float(np.median([s.background for s in members])),
                "median_p998": float(np.median([s.p998 for s in members])),
                "median_object_area": float(np.median([s.median_area for s in members])),
                "median_objects_per_image": float(np.median([s.objects for s in members])),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    if not (args.root / "train" / "images").is_dir():
        print(f"no dsb2018-fluo data at {args.root}", file=sys.stderr)
        return 1
    rows = describe(args.root)
    if args.json:
        print(json.dumps({"largest": largest_group(args.root), "groups": rows}, indent=2))
        return 0
    print(
        "| group | train | test | shapes | background | p99.8 | object area (px) | objects/image |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['group']} | {r['train']} | {r['test']} | {', '.join(r['shapes'])} "
            f"| {r['median_background']:g} | {r['median_p998']:g} "
            f"| {r['median_object_area']:g} | {r['median_objects_per_image']:g} |"
        )
    print()
    for r in rows:
        print(f"{r['group']}: {r['description']}")
    print(f"largest group: {largest_group(args.root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
