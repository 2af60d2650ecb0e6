"""The training data: object-centred crops read from the store, normalised and augmented.

One window per object from the crop table is read from the stored image and mask (padded
where the image is smaller), normalised with the image's percentiles and transformed by an
element of the rotation and flip group; the centres of the objects it shows are moved with
it. An epoch's crops are read by worker threads ahead of the network, with every random
choice drawn beforehand so that the crops do not depend on thread timing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from embedseg_cli.data.augment import apply_transform, transform_points, transforms
from embedseg_cli.data.normalise import normalise
from embedseg_cli.io.store import CropTable, ProjectStore
from embedseg_cli.records import DataProperties

__all__ = ["Crop", "CropSampler", "read_batches"]


@dataclass(frozen=True)
class Crop:
    """One augmented training crop and the centres of the objects it shows."""

    image: NDArray[np.float32]  # (C, *S)
    labels: NDArray[np.int64]  # (*S)
    ids: NDArray[np.int64]
    centres: NDArray[np.float64]  # (n, ndim), crop pixel coordinates


class CropSampler:
    """Reads object-centred, augmented crops from the store."""

    def __init__(self, store: ProjectStore, table: CropTable, props: DataProperties) -> None:
        self.store = store
        self.props = props
        self.records = store.images()
        self.size = props.crop_size
        self.group = transforms(props.ndim)
        # Per image: its objects' labels (sorted) and centres, to find the centre of every
        # object a crop shows, including objects whose centre lies outside the crop.
        self.objects: dict[int, tuple[NDArray[np.uint32], NDArray[np.float64]]] = {}
        for index in np.unique(table.image):
            rows = np.flatnonzero(table.image == index)
            order = np.argsort(table.label[rows])
            self.objects[int(index)] = (table.label[rows][order], table.centre[rows][order])
        self.table = table

    def crop(self, row: int, transform_index: int) -> Crop:
        """The window of crop-table ``row``, transformed by group element ``transform_index``."""
        index = int(self.table.image[row])
        record = self.records[index]
        start = [int(v) for v in self.table.window_start[row]]
        fill = record.percentiles[0][0]
        raw = self.store.read_window("images", record.name, start, self.size, fill=fill)
        channels = "C" in record.axes
        image = normalise(raw, record.percentiles, channel_axis=-1 if channels else None)
        image = np.moveaxis(image, -1, 0) if channels else image[None]
        labels = self.store.read_window("masks", record.name, start, self.size).astype(np.int64)
        ids = np.unique(labels)
        ids = ids[ids > 0]
        known, centres = self.objects[index]
        position = np.searchsorted(known, ids)
        centres_crop = centres[position] - np.asarray(start, dtype=np.float64)
        transform = self.group[transform_index]
        ndim = self.props.ndim
        return Crop(
            image=np.ascontiguousarray(apply_transform(image, transform, ndim)),
            labels=np.ascontiguousarray(apply_transform(labels, transform, ndim)),
            ids=ids,
            centres=transform_points(centres_crop, tuple(self.size), transform),
        )


def read_batches(
    sampler: CropSampler,
    rows: NDArray[np.int64],
    choices: NDArray[np.int64],
    batch_size: int,
    workers: int,
) -> Iterator[list[Crop]]:
    """The epoch's batches of crops, read by ``workers`` threads two batches ahead.

    The random choices are drawn beforehand, so the crops do not depend on thread timing.
    """
    jobs = [
        list(
            zip(
                rows[i : i + batch_size].tolist(), choices[i : i + batch_size].tolist(), strict=True
            )
        )
        for i in range(0, len(rows), batch_size)
    ]
    if workers == 0:
        for job in jobs:
            yield [sampler.crop(row, choice) for row, choice in job]
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[list[Future[Crop]]] = deque()
        for number in range(len(jobs)):
            while len(pending) < 2 and number + len(pending) < len(jobs):
                ahead = jobs[number + len(pending)]
                pending.append([pool.submit(sampler.crop, row, choice) for row, choice in ahead])
            yield [future.result() for future in pending.popleft()]
