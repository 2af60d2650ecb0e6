"""predict_array: labels for an array through predict, and a run stopped by its progress."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest

from embedseg_cli.predict import predict_array
from embedseg_cli.progress import CancelledError
from tests.napari.images import CENTRES, nuclei


class _StopAfter:
    """A progress that stops the run after ``steps`` steps and counts what it saw."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.started: list[tuple[str, int]] = []
        self.done = 0

    def start(self, description: str, total: int) -> None:
        self.started.append((description, total))

    def advance(self, steps: int = 1) -> None:
        self.done += steps
        if self.done >= self.steps:
            raise CancelledError

    def finish(self) -> None:
        pass


def test_predict_array_finds_the_nuclei_in_any_axis_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    image = nuclei()

    labels = predict_array(image, axes="YX", model="dsb2018-fluo", tta=False)
    # The same image as a chunked dask array with its axes the other way round.
    swapped = predict_array(
        da.from_array(image.T, chunks=(64, 64)), axes="XY", voxel_size=(1.0, 1.0), tta=False
    )

    assert labels.dtype == np.uint32
    assert labels.shape == (128, 128)
    assert len({int(labels[y, x]) for y, x in CENTRES} - {0}) == len(CENTRES)
    assert int(labels.max()) == len(CENTRES)
    np.testing.assert_array_equal(swapped, labels)
    assert list(tmp_path.iterdir()) == []  # the scratch folder is removed


def test_predict_array_refuses_file_options_and_unnamed_axes() -> None:
    with pytest.raises(ValueError, match="takes no out, resume"):
        predict_array(nuclei(), axes="YX", out=Path("x.zarr"), resume=True)
    with pytest.raises(ValueError, match="must name each of the image's 2 axes"):
        predict_array(nuclei(), axes="ZYX")


def test_progress_stops_predict_between_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    progress = _StopAfter(1)

    with pytest.raises(CancelledError):
        predict_array(nuclei(), axes="YX", tta=False, progress=progress)

    # Stopped after the network's one task: the clustering task never ran.
    ((_, total),) = progress.started
    assert progress.done == 1 < total
    # Nothing was left running to write into the (removed) scratch folder afterwards.
    assert list(tmp_path.iterdir()) == []
