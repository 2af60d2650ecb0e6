from pathlib import Path

import numpy as np
import pytest

from embedseg_cli.config import PrepareConfig
from embedseg_cli.io.store import ProjectStore
from embedseg_cli.prepare import prepare
from tests.conftest import shared_data

pytestmark = pytest.mark.data


def test_prepare_qcanet_embryo_3d(tmp_path: Path) -> None:
    report = prepare(PrepareConfig(source=shared_data("qcanet-embryo-3d"), out=tmp_path / "q.zarr"))
    assert report.images == {"train": 1, "val": 1, "test": 0}
    assert report.objects == {"train": 8, "val": 16, "test": 0}
    store = ProjectStore.open(tmp_path / "q.zarr")
    props = store.properties
    assert props.ndim == 3
    assert props.anisotropy == pytest.approx(2.18)
    assert props.foreground_weight > 1
    table = store.crop_table()
    assert len(table) == 24
    records = store.images()
    for row in range(len(table)):
        mask = store.mask(records[table.image[row]].name)[...]
        assert mask[tuple(table.centre[row].astype(int))] == table.label[row]


def test_prepare_stardist_demo_2d(tmp_path: Path) -> None:
    report = prepare(
        PrepareConfig(
            source=shared_data("stardist-demo-2d"), out=tmp_path / "s.zarr", val_fraction=0
        )
    )
    assert report.objects["train"] == 125
    store = ProjectStore.open(tmp_path / "s.zarr")
    assert store.properties.ndim == 2
    assert store.properties.n_objects == 125
    (record,) = store.images()
    assert record.shape == (512, 512)
    low, high = record.percentiles[0]
    image = store.image(record.name)[...]
    assert low == pytest.approx(np.percentile(image, 1))
    assert high == pytest.approx(np.percentile(image, 99.8))
