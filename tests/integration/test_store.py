import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from embedseg_cli.errors import (
    IncompleteStoreError,
    NotAStoreError,
    OutputExistsError,
    SchemaVersionError,
    StoreError,
    StoreNotFoundError,
)
from embedseg_cli.io.store import SCHEMA_VERSION, CropTable, ProjectStore
from embedseg_cli.io.store_writer import create_store
from embedseg_cli.records import DataProperties, ImageRecord

PROPERTIES = DataProperties(
    ndim=2,
    channels=1,
    voxel_size=(1.0, 1.0),
    anisotropy=1.0,
    n_objects=1,
    min_object_size=4,
    mean_object_size=4.0,
    max_object_size=4,
    mean_extent=(2.0, 2.0),
    std_extent=(0.0, 0.0),
    max_extent=(2, 2),
    foreground_weight=10.0,
    crop_size=(16, 16),
    centre="medoid",
)


def _record(name: str, split: str = "train") -> ImageRecord:
    return ImageRecord(
        name=name,
        split=split,  # type: ignore[arg-type]
        axes="YX",
        shape=(8, 10),
        dtype="uint16",
        voxel_size=(1.0, 1.0),
        source_image=f"images/{name}.tif",
        source_mask=f"masks/{name}.tif",
        n_objects=1,
        percentiles=((0.0, 1.0),),
    )


def _table() -> CropTable:
    return CropTable(
        image=np.array([0], np.uint32),
        label=np.array([1], np.uint32),
        size=np.array([4], np.int64),
        bbox_start=np.array([[2, 2]], np.int64),
        bbox_stop=np.array([[4, 4]], np.int64),
        centre=np.array([[2.0, 2.0]]),
        window_start=np.array([[-4, -3]], np.int64),
    )


def _build(path: Path, *, overwrite: bool = False, value: int = 7) -> ProjectStore:
    image = np.full((8, 10), value, np.uint16)
    mask = np.zeros((8, 10), np.uint32)
    mask[2:4, 2:4] = 1
    with create_store(path, overwrite=overwrite) as writer:
        writer.add_image(_record("a"), image, mask)
        writer.write_crop_table(_table())
        return writer.commit(PROPERTIES, {"config": {}})


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "p.zarr"
    _build(path)
    store = ProjectStore.open(path)
    assert store.schema_version == SCHEMA_VERSION
    assert store.properties == PROPERTIES
    assert [r.name for r in store.images("train")] == ["a"]
    assert store.images("test") == []
    assert store.image("a")[...].tolist() == np.full((8, 10), 7).tolist()
    assert store.mask("a").dtype == np.uint32
    assert store.mask("a")[2:4, 2:4].tolist() == [[1, 1], [1, 1]]
    table = store.crop_table()
    assert len(table) == 1
    assert table.window_start.tolist() == [[-4, -3]]
    assert store.history[0]["step"] == "prepare"
    # A plain Zarr v3 group: other tools can read it, with named dimensions.
    array = zarr.open_array(path / "images" / "a", mode="r")
    assert array.metadata.zarr_format == 3
    assert array.metadata.dimension_names == ("y", "x")


def test_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError, match="embedseg prepare"):
        ProjectStore.open(tmp_path / "nothing.zarr")


def test_folder_that_is_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(NotAStoreError, match=r"no zarr\.json"):
        ProjectStore.open(tmp_path)
    zarr.open_group(tmp_path / "other.zarr", mode="w", zarr_format=3)
    with pytest.raises(NotAStoreError, match="not an embedseg project store"):
        ProjectStore.open(tmp_path / "other.zarr")


def _edit_root_attrs(path: Path, **changes: object) -> None:
    meta_path = path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["embedseg"].update(changes)
    meta_path.write_text(json.dumps(meta))


def test_unknown_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "p.zarr"
    _build(path)
    _edit_root_attrs(path, schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(SchemaVersionError, match=f"version {SCHEMA_VERSION + 1}"):
        ProjectStore.open(path)


def test_incomplete_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.zarr"
    _build(path)
    _edit_root_attrs(path, complete=False)
    with pytest.raises(IncompleteStoreError, match="interrupted"):
        ProjectStore.open(path)


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "p.zarr"
    _build(path)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        _build(path)
    _build(path, overwrite=True, value=9)
    assert ProjectStore.open(path).image("a")[0, 0] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.zarr"]


def test_failure_while_writing_leaves_the_old_store_intact(tmp_path: Path) -> None:
    path = tmp_path / "p.zarr"
    _build(path, value=3)

    def write_then_fail() -> None:
        with create_store(path, overwrite=True) as writer:
            writer.add_image(
                _record("b"), np.zeros((8, 10), np.uint16), np.zeros((8, 10), np.uint32)
            )
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_then_fail()
    store = ProjectStore.open(path)
    assert [r.name for r in store.images()] == ["a"]
    assert store.image("a")[0, 0] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.zarr"]


def test_overwrite_refuses_what_is_not_a_store_before_writing(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep\n")
    (tmp_path / "file.zarr").write_text("keep\n")
    zarr.open_group(tmp_path / "other.zarr", mode="w", zarr_format=3).attrs["x"] = 1

    for name in ("results", "file.zarr", "other.zarr"):
        with pytest.raises(OutputExistsError, match="replaces only a project store"):
            _build(tmp_path / name, overwrite=True)

    assert (folder / "notes.txt").read_text() == "keep\n"
    assert (tmp_path / "file.zarr").read_text() == "keep\n"
    assert zarr.open_group(tmp_path / "other.zarr", mode="r").attrs["x"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.zarr", "other.zarr", "results"]


def test_overwrite_replaces_an_incomplete_store(tmp_path: Path) -> None:
    path = tmp_path / "p.zarr"
    _build(path, value=3)
    _edit_root_attrs(path, complete=False)
    _build(path, overwrite=True, value=5)
    assert ProjectStore.open(path).image("a")[0, 0] == 5


def test_commit_refuses_a_folder_that_appeared_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "p.zarr"

    def write_while_a_folder_appears() -> None:
        with create_store(path, overwrite=True) as writer:
            writer.add_image(
                _record("a"), np.zeros((8, 10), np.uint16), np.zeros((8, 10), np.uint32)
            )
            writer.write_crop_table(_table())
            path.mkdir()
            (path / "notes.txt").write_text("keep\n")
            writer.commit(PROPERTIES, {})

    with pytest.raises(OutputExistsError, match="not an embedseg project store"):
        write_while_a_folder_appears()
    assert (path / "notes.txt").read_text() == "keep\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.zarr"]


def test_a_staging_folder_is_never_trusted(tmp_path: Path) -> None:
    path = tmp_path / "p.zarr"
    with create_store(path) as writer:
        writer.add_image(_record("a"), np.zeros((8, 10), np.uint16), np.zeros((8, 10), np.uint32))
        assert not path.exists()
        with pytest.raises(IncompleteStoreError):
            ProjectStore.open(writer.staging)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_stale_staging_of_a_dead_process_is_removed(tmp_path: Path) -> None:
    stale = tmp_path / ".p.zarr.incomplete-999999999-abcdef12"
    stale.mkdir()
    _build(tmp_path / "p.zarr")
    assert not stale.exists()


def test_read_window_pads_outside_the_image(tmp_path: Path) -> None:
    store = _build(tmp_path / "p.zarr", value=5)
    window = store.read_window("images", "a", (-2, 6), (4, 6), fill=1)
    assert window.shape == (4, 6)
    assert window[:2].tolist() == [[1] * 6] * 2
    assert window[2:, :4].tolist() == [[5] * 4] * 2
    assert window[2:, 4:].tolist() == [[1] * 2] * 2
    mask = store.read_window("masks", "a", (1, 1), (2, 2))
    assert mask.tolist() == [[0, 0], [0, 1]]


def test_checkpoints_round_trip_and_replace_atomically(tmp_path: Path) -> None:
    store = _build(tmp_path / "p.zarr")
    with pytest.raises(StoreError, match="embedseg train"):
        store.read_checkpoint()
    tensors = {"conv.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.array([3])}
    store.write_checkpoint("run-1", "last", tensors, {"epoch": 1})
    store.write_checkpoint("run-1", "last", {**tensors, "step": np.array([4])}, {"epoch": 2})
    read, attrs = ProjectStore.open(store.path).read_checkpoint("run-1", "last")
    assert attrs["epoch"] == 2
    assert read["step"].tolist() == [4]
    assert read["conv.weight"].tolist() == tensors["conv.weight"].tolist()
    assert store.checkpoint_tags("run-1") == ["last"]
    with pytest.raises(StoreError, match="no complete checkpoint"):
        store.read_checkpoint("run-1", "best")
    # Nothing hidden is left behind by the replacement.
    assert sorted(p.name for p in (store.path / "checkpoints" / "run-1").iterdir()) == [
        "last",
        "zarr.json",
    ]


def test_predictions_are_replaced_and_listed_when_complete(tmp_path: Path) -> None:
    store = _build(tmp_path / "p.zarr")
    labels = np.zeros((8, 10), np.uint32)
    labels[1:3, 1:3] = 1
    store.write_prediction("a", labels)
    store.write_prediction("a", labels * 2)
    assert store.prediction_names() == ["a"]
    assert int(store.prediction("a")[...].max()) == 2
    with pytest.raises(StoreError, match="uint32"):
        store.write_prediction("a", labels.astype(np.int64))
