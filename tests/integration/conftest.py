"""Fixtures shared by the integration tests: a tiny trained model and a test image."""

from pathlib import Path

import numpy as np
import pytest
import tifffile

from embedseg_cli.config import PrepareConfig, TrainConfig
from embedseg_cli.prepare import prepare
from embedseg_cli.train import train
from tests.conftest import disks, write_pair


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("model")
    rng = np.random.default_rng(5)
    for i, split in enumerate(("train", "val")):
        image, mask = disks((40, 40), 4, rng)
        write_pair(root / "src" / split, f"i{i}", image, mask)
    store = root / "p.zarr"
    prepare(PrepareConfig(source=root / "src", out=store, crop_size=(32,)))
    train(
        TrainConfig(
            store=store,
            epochs=1,
            steps_per_epoch=1,
            virtual_batch_multiplier=1,
            run="m",
            device="cpu",
        )
    )
    return store


@pytest.fixture(scope="session")
def image_2d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("input") / "image.tif"
    image, _ = disks((150, 130), 40, np.random.default_rng(6))
    tifffile.imwrite(path, image)
    return path
