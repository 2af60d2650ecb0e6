import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from skimage.transform import rescale
from typer.testing import CliRunner

from embedseg_cli.cli import app
from embedseg_cli.errors import IncompleteStoreError
from embedseg_cli.io.store import ProjectStore
from tests.conftest import disks, write_pair

runner = CliRunner()


def _prepare(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(app, ["prepare", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def test_prepare_2d(make_dataset: Callable[..., Path], tmp_path: Path) -> None:
    source = make_dataset(n_images=7, n_objects=4)
    code, stdout, _ = _prepare(source, "--out", tmp_path / "p.zarr", "--json")
    assert code == 0
    summary = json.loads(stdout)
    assert summary["images"] == {"train": 6, "val": 1, "test": 0}
    store = ProjectStore.open(tmp_path / "p.zarr")
    props = store.properties
    assert props.ndim == 2
    assert props.foreground_weight == 10.0
    assert props.crop_size[0] % 8 == 0
    # The median object diameter: of the circles of the objects' areas, over all objects.
    sizes = np.concatenate(
        [np.bincount(store.mask(r.name)[...].ravel())[1:] for r in store.images()]
    )
    diameters = np.sqrt(4 * sizes[sizes > 0] / np.pi)
    assert props.median_diameter == pytest.approx(np.median(diameters), abs=1e-3)
    assert props.diameter_quartiles == pytest.approx(np.percentile(diameters, [25, 75]), abs=1e-3)
    assert 6 <= props.median_diameter <= 12  # disks of radius 3 to 5
    table = store.crop_table()
    records = store.images()
    assert len(table) == sum(r.n_objects for r in records if r.split in ("train", "val"))
    # Each centre is a pixel of its own object, and each window holds its object's centre.
    for row in range(len(table)):
        name = records[table.image[row]].name
        mask = store.mask(name)[...]
        centre = tuple(table.centre[row].astype(int))
        assert mask[centre] == table.label[row]
        assert np.all(table.window_start[row] <= table.centre[row])
        assert np.all(table.centre[row] < table.window_start[row] + props.crop_size)


def test_split_is_seeded_and_reproducible(
    make_dataset: Callable[..., Path], tmp_path: Path
) -> None:
    source = make_dataset(n_images=10)

    def val_names(out: str, seed: str) -> list[str]:
        assert (
            _prepare(source, "--out", tmp_path / out, "--seed", seed, "--val-fraction", "0.3")[0]
            == 0
        )
        return [r.name for r in ProjectStore.open(tmp_path / out).images("val")]

    first = val_names("a.zarr", "1")
    assert len(first) == 3
    assert val_names("b.zarr", "1") == first
    assert val_names("c.zarr", "2") != first


def test_split_folders_are_kept(make_dataset: Callable[..., Path], tmp_path: Path) -> None:
    source = make_dataset(n_images=6, splits=("train", "val", "test"))
    assert _prepare(source, "--out", tmp_path / "p.zarr")[0] == 0
    store = ProjectStore.open(tmp_path / "p.zarr")
    assert [len(store.images(s)) for s in ("train", "val", "test")] == [2, 2, 2]
    # Test images are stored for prediction but give no training crops.
    assert set(store.crop_table().image.tolist()) <= {
        i for i, r in enumerate(store.images()) if r.split != "test"
    }


def _volumes(tmp_path: Path, rng: np.random.Generator, **tiff_kwargs: object) -> Path:
    """Two small ImageJ volumes with their masks, written with ``tiff_kwargs``."""
    source = tmp_path / "src"
    for i in range(2):
        image, mask = disks((12, 24, 24), 3, rng, radius=(3, 5))
        write_pair(source, f"v{i}", image, mask, imagej=True, **tiff_kwargs)
    return source


def test_3d_voxel_size_from_imagej_metadata(tmp_path: Path, rng: np.random.Generator) -> None:
    source = _volumes(
        tmp_path,
        rng,
        resolution=(1 / 0.5, 1 / 0.5),
        metadata={"spacing": 1.5, "unit": "um", "axes": "ZYX"},
    )
    assert _prepare(source, "--out", tmp_path / "p.zarr")[0] == 0
    props = ProjectStore.open(tmp_path / "p.zarr").properties
    assert props.ndim == 3
    assert props.voxel_size == pytest.approx((1.5, 0.5, 0.5))
    assert props.anisotropy == pytest.approx(3.0)
    assert props.foreground_weight > 1
    assert len(props.crop_size) == 3
    code, _, _ = _prepare(source, "--out", tmp_path / "q.zarr", "--voxel-size", "2", "1", "1")
    assert code == 0
    assert ProjectStore.open(tmp_path / "q.zarr").properties.anisotropy == pytest.approx(2.0)


def test_3d_without_z_spacing_is_taken_as_isotropic(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    source = _volumes(
        tmp_path, rng, resolution=(1 / 0.5, 1 / 0.5), metadata={"unit": "um", "axes": "ZYX"}
    )
    code, _, stderr = _prepare(source, "--out", tmp_path / "p.zarr")
    assert code == 0
    assert "no z spacing" in stderr
    props = ProjectStore.open(tmp_path / "p.zarr").properties
    assert props.voxel_size == pytest.approx((0.5, 0.5, 0.5))
    assert props.anisotropy == pytest.approx(1.0)


def test_z_spacing_without_a_unit_keeps_the_voxel_shape(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    # ImageJ's spacing is in the unit of the pixel width, here none: the size in µm is
    # unknown but the voxels are still twice as deep as wide.
    source = _volumes(tmp_path, rng, metadata={"spacing": 2.0})
    code, _, stderr = _prepare(source, "--out", tmp_path / "p.zarr")
    assert code == 0
    assert "isotropic" not in stderr
    props = ProjectStore.open(tmp_path / "p.zarr").properties
    assert props.voxel_size == pytest.approx((2.0, 1.0, 1.0))
    assert props.anisotropy == pytest.approx(2.0)


def test_downsampling_stores_a_coarser_grid(tmp_path: Path, rng: np.random.Generator) -> None:
    source = tmp_path / "src"
    image, mask = disks((40, 48), 4, rng, radius=(4, 7))
    write_pair(source, "a", image, mask, resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    args = ("--val-fraction", "0", "--crop-size", "16", "--downsample", "2")
    assert _prepare(source, "--out", tmp_path / "p.zarr", *args)[0] == 0
    store = ProjectStore.open(tmp_path / "p.zarr")
    assert store.properties.voxel_size == pytest.approx((1.0, 1.0))
    small = store.image("a")[...]
    assert small.shape == (20, 24)
    assert small.dtype == np.float32
    # Every output pixel sits at the centre of a 2x2 block of input pixels, smoothed first
    # (anti-aliasing) as scikit-image's rescale does.
    expected = rescale(
        image.astype(np.float32), 0.5, order=1, anti_aliasing=True, preserve_range=True
    )
    np.testing.assert_allclose(small, expected, rtol=1e-6, atol=1e-3)
    labels = store.mask("a")[...]
    assert labels.dtype == np.uint32
    kept = np.unique(mask[1::2, 1::2])
    assert labels.max() == len(kept) - 1
    np.testing.assert_array_equal(labels > 0, mask[1::2, 1::2] > 0)
    assert store.images()[0].n_objects == len(kept) - 1
    assert store.properties.mean_object_size < np.bincount(mask.ravel())[1:].mean() / 3


def test_downsampling_per_axis_keeps_z(tmp_path: Path, rng: np.random.Generator) -> None:
    source = tmp_path / "src"
    image, mask = disks((6, 24, 24), 3, rng, radius=(3, 5))
    write_pair(source, "v", image, mask)
    out = tmp_path / "p.zarr"
    args = ("--val-fraction", "0", "--voxel-size", "2", "0.5", "0.5", "--downsample", "1x2x2")
    assert _prepare(source, "--out", out, "--crop-size", "8", *args)[0] == 0
    store = ProjectStore.open(out)
    assert store.image("v").shape == (6, 12, 12)
    assert store.properties.voxel_size == pytest.approx((2.0, 1.0, 1.0))
    assert store.properties.anisotropy == pytest.approx(2.0)


def test_bad_downsampling_is_explained(make_dataset: Callable[..., Path], tmp_path: Path) -> None:
    _bad(make_dataset(), tmp_path, "give 1 or 2", "--downsample", "1x2x2")
    _bad(make_dataset(), tmp_path, "at least 1", "--downsample", "0", code=2)


def test_multichannel_images_are_stored_channels_last(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    source = tmp_path / "src"
    image, mask = disks((32, 40), 3, rng)
    write_pair(source, "yxc", np.stack([image, image // 2], axis=-1), mask)
    write_pair(source, "cyx", np.stack([image, image // 2], axis=0), mask)
    assert _prepare(source, "--out", tmp_path / "p.zarr", "--val-fraction", "0")[0] == 0
    store = ProjectStore.open(tmp_path / "p.zarr")
    assert store.properties.channels == 2
    for record in store.images():
        assert record.axes == "YXC"
        assert store.image(record.name).shape == (32, 40, 2)
        assert len(record.percentiles) == 2


def test_small_images_are_padded_not_dropped(tmp_path: Path, rng: np.random.Generator) -> None:
    source = tmp_path / "src"
    image, mask = disks((20, 24), 2, rng)
    write_pair(source, "small", image, mask)
    assert _prepare(source, "--out", tmp_path / "p.zarr", "--crop-size", "32")[0] == 0
    store = ProjectStore.open(tmp_path / "p.zarr")
    table = store.crop_table()
    assert len(table) == 2
    assert table.window_start.tolist() == [[-6, -4]] * 2


def test_masks_are_relabelled_to_consecutive_uint32(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    source = tmp_path / "src"
    image, mask = disks((32, 32), 3, rng)
    sparse = np.where(mask > 0, mask.astype(np.int64) * 1000 + 7, 0)
    write_pair(source, "a", image, sparse)
    assert _prepare(source, "--out", tmp_path / "p.zarr")[0] == 0
    stored = ProjectStore.open(tmp_path / "p.zarr").mask("a")[...]
    assert stored.dtype == np.uint32
    assert np.unique(stored).tolist() == [0, 1, 2, 3]
    assert np.array_equal(stored > 0, mask > 0)


def test_empty_mask_is_a_warning(tmp_path: Path, rng: np.random.Generator) -> None:
    source = tmp_path / "src"
    image, mask = disks((32, 32), 3, rng)
    write_pair(source, "a", image, mask)
    write_pair(source, "empty", image, np.zeros_like(mask))
    code, _, stderr = _prepare(source, "--out", tmp_path / "p.zarr")
    assert code == 0
    assert "empty.tif has no objects" in stderr


def _bad(source: Path, tmp_path: Path, expected: str, *extra: str, code: int = 1) -> str:
    """Prepare fails with exit ``code`` (2: an option out of range), one line, nothing written."""
    out = tmp_path / "out.zarr"
    exit_code, stdout, stderr = _prepare(source, "--out", out, *extra)
    assert exit_code == code, stdout + stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    assert expected in lines[0]
    assert not out.exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".out.zarr")] == []
    return lines[0]


def test_missing_masks_folder(make_dataset: Callable[..., Path], tmp_path: Path) -> None:
    source = make_dataset()
    for f in (source / "masks").iterdir():
        f.unlink()
    (source / "masks").rmdir()
    _bad(source, tmp_path, "has no masks/ beside it")


def test_unmatched_names(make_dataset: Callable[..., Path], tmp_path: Path) -> None:
    source = make_dataset()
    (source / "masks" / "img01.tif").rename(source / "masks" / "other.tif")
    line = _bad(source, tmp_path, "img01.tif has no mask")
    assert str(source / "images" / "img01.tif") in line


def test_shape_mismatch(make_dataset: Callable[..., Path], tmp_path: Path) -> None:
    source = make_dataset()
    tifffile.imwrite(source / "masks" / "img02.tif", np.zeros((48, 40), np.uint16))
    line = _bad(source, tmp_path, "has shape (48, 40) but image")
    assert "img02.tif" in line


def test_float_mask(make_dataset: Callable[..., Path], tmp_path: Path) -> None:
    source = make_dataset()
    tifffile.imwrite(source / "masks" / "img00.tif", np.zeros((48, 48), np.float32))
    _bad(source, tmp_path, "has float32 values: masks must hold integer instance labels")


def test_nan_in_an_image(make_dataset: Callable[..., Path], tmp_path: Path) -> None:
    source = make_dataset()
    image = tifffile.imread(source / "images" / "img01.tif").astype(np.float32)
    image[3, 4] = np.nan
    tifffile.imwrite(source / "images" / "img01.tif", image)
    _bad(source, tmp_path, "img01.tif has NaN or infinite intensities: replace them")


def test_negative_mask(make_dataset: Callable[..., Path], tmp_path: Path) -> None:
    source = make_dataset()
    tifffile.imwrite(source / "masks" / "img00.tif", -np.ones((48, 48), np.int16))
    _bad(source, tmp_path, "has negative labels")


def test_non_tiff_file(make_dataset: Callable[..., Path], tmp_path: Path) -> None:
    source = make_dataset()
    (source / "images" / "notes.png").write_bytes(b"\x89PNG")
    _bad(source, tmp_path, "notes.png is not a TIFF file")


def test_unreadable_tiff(make_dataset: Callable[..., Path], tmp_path: Path) -> None:
    source = make_dataset()
    (source / "images" / "img03.tif").write_bytes(b"not a tiff at all")
    _bad(source, tmp_path, "img03.tif cannot be read as a TIFF")


def test_mixed_2d_and_3d(
    make_dataset: Callable[..., Path], tmp_path: Path, rng: np.random.Generator
) -> None:
    source = make_dataset(n_images=2)
    image, mask = disks((8, 48, 48), 2, rng)
    write_pair(source, "zz_volume", image, mask)
    _bad(source, tmp_path, "a project holds 2D images or 3D volumes, not both")


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "src" / "images").mkdir(parents=True)
    (tmp_path / "src" / "masks").mkdir()
    _bad(tmp_path / "src", tmp_path, "holds no TIFF images")
    _bad(tmp_path / "nowhere", tmp_path, "is not a folder")


def test_bad_crop_size_is_explained(make_dataset: Callable[..., Path], tmp_path: Path) -> None:
    _bad(
        make_dataset(),
        tmp_path,
        "--crop-size: crop sizes must be positive multiples of 8",
        "--crop-size",
        "20",
        code=2,
    )


def test_existing_output_is_kept(make_dataset: Callable[..., Path], tmp_path: Path) -> None:
    source = make_dataset()
    out = tmp_path / "p.zarr"
    assert _prepare(source, "--out", out)[0] == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    code, _, stderr = _prepare(source, "--out", out)
    assert code == 1
    assert "already exists" in stderr
    assert "--overwrite" in stderr
    # A failing --overwrite run leaves the old store as it was.
    (source / "images" / "img00.tif").write_bytes(b"broken")
    code, _, stderr = _prepare(source, "--out", out, "--overwrite")
    assert code == 1
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    ProjectStore.open(out)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_overwrite_never_replaces_the_source_folder(
    make_dataset: Callable[..., Path], tmp_path: Path
) -> None:
    source = make_dataset()
    before = _files(source)

    code, _, stderr = _prepare(source, "--out", source, "--overwrite")

    assert code == 1
    assert f"--out {source} is the input SRC" in stderr
    assert "choose another --out" in stderr
    assert _files(source) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_overwrite_never_replaces_a_folder_that_holds_the_source(
    make_dataset: Callable[..., Path], tmp_path: Path
) -> None:
    source = make_dataset()
    before = _files(tmp_path)

    code, _, stderr = _prepare(source, "--out", tmp_path, "--overwrite")

    assert code == 1
    assert f"--out {tmp_path} contains the input SRC" in stderr
    assert _files(tmp_path) == before


def test_overwrite_replaces_only_a_project_store(
    make_dataset: Callable[..., Path], tmp_path: Path
) -> None:
    source = make_dataset()
    results = tmp_path / "myresults"
    results.mkdir()
    (results / "notes.txt").write_text("x\n")
    other_zarr = tmp_path / "other.zarr"
    zarr.open_group(other_zarr, mode="w", zarr_format=3).create_array("a", data=np.arange(3))
    plain_file = tmp_path / "p.zarr"
    plain_file.write_text("not a store\n")
    before = _files(tmp_path)

    for out, what in [
        (results, "a folder that is not an embedseg project store"),
        (other_zarr, "a folder that is not an embedseg project store"),
        (plain_file, "a file"),
    ]:
        code, _, stderr = _prepare(source, "--out", out, "--overwrite")
        assert code == 1, out
        assert f"{out} exists and is {what}" in stderr
        assert "--overwrite replaces only a project store" in stderr
        assert "choose another --out, or remove it yourself" in stderr

    assert _files(tmp_path) == before
    assert not list(tmp_path.glob(".*"))


def test_overwrite_replaces_an_earlier_store(
    make_dataset: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "p.zarr"
    assert _prepare(make_dataset(n_images=4), "--out", out)[0] == 0
    assert _prepare(make_dataset(n_images=3, name="src3"), "--out", out, "--overwrite")[0] == 0
    assert len(ProjectStore.open(out).images()) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.zarr", "src", "src3"]


def test_killed_run_leaves_nothing_trusted(
    make_dataset: Callable[..., Path], tmp_path: Path
) -> None:
    source = make_dataset(n_images=60, shape=(192, 192), n_objects=30)
    out = tmp_path / "p.zarr"
    process = subprocess.Popen(
        [sys.executable, "-m", "embedseg_cli", "-q", "prepare", str(source), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    staging: list[Path] = []
    while time.monotonic() < deadline and not staging:
        staging = [p for p in tmp_path.glob(".p.zarr.incomplete-*") if (p / "masks").is_dir()]
        time.sleep(0.01)
    assert staging, "the run never started writing"
    time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not out.exists()
    with pytest.raises(IncompleteStoreError):
        ProjectStore.open(staging[0])
    # The next run cleans up after the killed one.
    assert _prepare(source, "--out", out)[0] == 0
    assert not staging[0].exists()


def test_a_preset_fills_the_options_not_given(
    make_dataset: Callable[..., Path], tmp_path: Path
) -> None:
    source = make_dataset(n_images=7, n_objects=4)
    code, _, err = _prepare(source, "--out", tmp_path / "a.zarr", "--preset", "dsb2018")
    assert code == 0, err
    assert ProjectStore.open(tmp_path / "a.zarr").properties.crop_size == (256, 256)
    code, _, err = _prepare(
        source, "--out", tmp_path / "b.zarr", "--preset", "dsb2018", "--crop-size", "24"
    )
    assert code == 0, err
    assert ProjectStore.open(tmp_path / "b.zarr").properties.crop_size == (24, 24)
    code, _, err = _prepare(source, "--out", tmp_path / "d.zarr", "--preset", "usiigaci-cpu")
    assert code == 0, err
    props = ProjectStore.open(tmp_path / "d.zarr").properties
    assert (props.crop_size, props.downsample) == ((256, 256), (2, 2))
    code, _, err = _prepare(source, "--out", tmp_path / "c.zarr", "--preset", "nope")
    assert code == 2
    assert "usiigaci" in err
