import itertools
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import Result
from typer.testing import CliRunner

from embedseg_cli.cli import app
from embedseg_cli.config import PrepareConfig, TrainConfig
from embedseg_cli.errors import InputError
from embedseg_cli.io.models import load_network, read_model
from embedseg_cli.io.store import ProjectStore
from embedseg_cli.method.model import BranchedERFNet
from embedseg_cli.prepare import prepare
from embedseg_cli.train import poly_learning_rate, train
from embedseg_cli.train import runs as train_runs
from embedseg_cli.train.crops import CropSampler


@pytest.fixture
def store_2d(make_dataset: Callable[..., Path], tmp_path: Path) -> Path:
    source = make_dataset(n_images=4, shape=(40, 40), n_objects=4, splits=("train", "train", "val"))
    out = tmp_path / "p.zarr"
    prepare(PrepareConfig(source=source, out=out, crop_size=(32,)))
    return out


def _config(store: Path, **changes: object) -> TrainConfig:
    base: dict[str, object] = {
        "store": store,
        "epochs": 2,
        "steps_per_epoch": 2,
        "batch_size": 2,
        "virtual_batch_multiplier": 1,
        "run": "r",
        "device": "cpu",
    }
    return TrainConfig.model_validate({**base, **changes})


def test_training_writes_checkpoints_that_carry_the_data_properties(store_2d: Path) -> None:
    report = train(_config(store_2d))
    assert [e["epoch"] for e in report.history] == [1, 2]
    assert all(np.isfinite(e["loss"]) for e in report.history)
    assert all(0.0 <= e["val_ap50"] <= 1.0 for e in report.history)
    store = ProjectStore.open(store_2d)
    assert store.checkpoint_runs() == ["r"]
    assert store.checkpoint_tags("r") == ["best", "last"]
    tensors, attrs = store.read_checkpoint("r", "best")
    assert attrs["data"]["min_object_size"] == store.properties.min_object_size
    assert attrs["model"] == {
        "architecture": "BranchedERFNet",
        "in_channels": 1,
        "ndim": 2,
        "embedding_scale": 1024.0,
        "spacing": [1.0, 1.0],
    }
    assert attrs["thresholds"]["seed"] == 0.9
    assert [e["epoch"] for e in store.run_metrics("r")] == [1, 2]
    model = load_network(read_model(store_2d, run="r"), torch.device("cpu"))
    image = torch.rand(1, 1, 32, 32)
    reference = BranchedERFNet(1, 2).eval()
    reference.load_state_dict(
        {k.removeprefix("model."): torch.from_numpy(v) for k, v in tensors.items()}
    )
    assert torch.equal(model(image), reference(image))
    assert not any(k.startswith("optimizer.") for k in tensors)
    assert any(k.startswith("optimizer.") for k in store.read_checkpoint("r", "last")[0])


def test_resuming_gives_the_same_weights_as_training_straight_through(store_2d: Path) -> None:
    train(_config(store_2d, run="straight"))
    train(_config(store_2d, run="resumed", epochs=1))
    train(_config(store_2d, run="resumed", epochs=2, resume=True))
    store = ProjectStore.open(store_2d)
    straight = store.read_checkpoint("straight", "last")[0]
    resumed = store.read_checkpoint("resumed", "last")[0]
    for name, value in straight.items():
        if name.startswith("model."):
            assert np.allclose(value, resumed[name], atol=1e-6), name


def test_crops_keep_each_object_with_its_own_centre(store_2d: Path) -> None:
    store = ProjectStore.open(store_2d)
    table = store.crop_table()
    sampler = CropSampler(store, table, store.properties)
    checked = 0
    for row in range(len(table)):
        for transform in range(8):
            crop = sampler.crop(row, transform)
            assert crop.image.shape == (1, 32, 32)
            assert crop.image.dtype == np.float32
            assert crop.labels.shape == (32, 32)
            assert sorted(crop.ids.tolist()) == sorted(set(crop.labels[crop.labels > 0].tolist()))
            for label, centre in zip(crop.ids, crop.centres, strict=True):
                position = tuple(np.round(centre).astype(int))
                if all(0 <= p < 32 for p in position):
                    assert crop.labels[position] == label
                    checked += 1
    assert checked > len(table)


def test_learning_rate_decays_to_zero_over_any_number_of_epochs() -> None:
    rates = [poly_learning_rate(5e-4, epoch, 300) for epoch in range(300)]
    assert rates[0] == 5e-4
    assert all(a > b > 0 for a, b in itertools.pairwise(rates))
    assert rates[250] > 0


def test_3d_training_runs(tmp_path: Path, rng: np.random.Generator) -> None:
    from tests.conftest import disks, write_pair

    source = tmp_path / "src"
    for i in range(2):
        image, mask = disks((16, 32, 32), 3, rng, radius=(3, 5))
        write_pair(source / ("train" if i == 0 else "val"), f"v{i}", image, mask)
    out = tmp_path / "p.zarr"
    prepare(PrepareConfig(source=source, out=out, crop_size=(16,), voxel_size=(2.0, 1.0, 1.0)))
    report = train(_config(out, epochs=1))
    assert np.isfinite(report.final_loss)
    _, attrs = ProjectStore.open(out).read_checkpoint("r", "best")
    assert attrs["model"]["spacing"] == [2.0, 1.0, 1.0]


def test_cli_train_and_its_errors(store_2d: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "-q",
            "train",
            str(store_2d),
            "--epochs",
            "1",
            "--steps-per-epoch",
            "1",
            "--virtual-batch-multiplier",
            "1",
            "--run",
            "cli",
            "--json",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert '"run": "cli"' in result.stdout
    # A preset sets what is not given on the command line.
    result = runner.invoke(
        app,
        [
            "-q",
            "train",
            str(store_2d),
            "--preset",
            "usiigaci-cpu",
            "--epochs",
            "1",
            "--steps-per-epoch",
            "1",
            "--run",
            "preset",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    config = ProjectStore.open(store_2d).read_checkpoint("preset", "last")[1]["config"]
    assert (config["epochs"], config["steps_per_epoch"]) == (1, 1)
    assert (config["batch_size"], config["virtual_batch_multiplier"]) == (4, 2)
    assert config["tune_thresholds"] is True
    missing = runner.invoke(app, ["train", str(tmp_path / "none.zarr")])
    assert missing.exit_code == 1
    assert "embedseg prepare" in missing.stderr
    if not torch.cuda.is_available():
        gpu = runner.invoke(app, ["train", str(store_2d), "--device", "cuda"])
        assert gpu.exit_code == 1
        assert "CUDA is not available" in gpu.stderr
    resume = runner.invoke(app, ["train", str(store_2d), "--run", "never", "--resume"])
    assert resume.exit_code == 1
    assert "no complete checkpoint" in resume.stderr


def test_validation_can_pick_the_foreground_threshold(store_2d: Path) -> None:
    report = train(_config(store_2d, epochs=1, tune_thresholds=True, run="tuned"))
    threshold = report.history[0]["foreground_threshold"]
    assert threshold in (0.3, 0.4, 0.5, 0.6, 0.7)
    _, attrs = ProjectStore.open(store_2d).read_checkpoint("tuned", "best")
    assert attrs["thresholds"]["foreground"] == threshold


class _InterruptAfter:
    """A progress sink that presses Ctrl-C after ``steps`` batches."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, steps: int = 1) -> None:
        self.steps -= steps
        if self.steps <= 0:
            raise KeyboardInterrupt

    def finish(self) -> None:
        pass


def test_ctrl_c_saves_a_checkpoint_that_resumes(store_2d: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        train(_config(store_2d, run="stopped", epochs=2), progress=_InterruptAfter(3))
    store = ProjectStore.open(store_2d)
    _, attrs = store.read_checkpoint("stopped", "last")
    assert attrs["epoch"] == 0  # stopped in the second epoch: resume repeats it
    report = train(_config(store_2d, run="stopped", epochs=2, resume=True))
    assert [e["epoch"] for e in report.history] == [1, 2]


def test_resuming_a_checkpoint_of_another_kind_of_model_is_refused(store_2d: Path) -> None:
    train(_config(store_2d, run="r2", epochs=1))
    store = ProjectStore.open(store_2d)
    tensors, attrs = store.read_checkpoint("r2", "last")
    attrs["model"]["ndim"] = 3
    store.write_checkpoint("r2", "last", tensors, attrs)
    with pytest.raises(InputError, match="3D model"):
        train(_config(store_2d, run="r2", epochs=2, resume=True))


def _cli(store: Path, *args: str) -> Result:
    return CliRunner().invoke(
        app,
        ["-q", "train", str(store), "--steps-per-epoch", "1", "--device", "cpu", *args],
    )


def test_a_run_of_an_existing_name_is_refused_unless_resumed_or_overwritten(
    store_2d: Path,
) -> None:
    train(_config(store_2d, epochs=1, steps_per_epoch=1))
    store = ProjectStore.open(store_2d)
    before = {tag: store.read_checkpoint("r", tag)[1]["time"] for tag in ("best", "last")}

    refused = _cli(store_2d, "--epochs", "1", "--run", "r", "--seed", "1")
    assert refused.exit_code == 1
    line = " ".join(refused.stderr.split())
    assert f"{store_2d} already has a training run r" in line
    for fix in ("--resume", "--run OTHER", "--overwrite"):
        assert fix in line
    store = ProjectStore.open(store_2d)
    assert {tag: store.read_checkpoint("r", tag)[1]["time"] for tag in before} == before
    assert [e["epoch"] for e in store.run_metrics("r")] == [1]
    assert not any(p.name.startswith(".") for p in (store_2d / "checkpoints" / "r").iterdir())

    both = _cli(store_2d, "--epochs", "1", "--run", "r", "--resume", "--overwrite")
    assert both.exit_code == 2
    assert "pass only one" in both.output

    replaced = _cli(store_2d, "--epochs", "1", "--run", "r", "--seed", "1", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    store = ProjectStore.open(store_2d)
    for tag in ("best", "last"):
        assert store.read_checkpoint("r", tag)[1]["config"]["seed"] == 1


def test_overwriting_replaces_the_earlier_best_at_the_first_checkpoint(store_2d: Path) -> None:
    train(_config(store_2d, epochs=1, steps_per_epoch=1))
    # The new run validates only every 2 epochs and is stopped in its second: its first
    # checkpoint (epoch 1) is not validated, and still no best of the earlier run is left.
    with pytest.raises(KeyboardInterrupt):
        train(
            _config(store_2d, steps_per_epoch=1, validate_every=2, seed=1, overwrite=True),
            progress=_InterruptAfter(2),
        )
    store = ProjectStore.open(store_2d)
    for tag in ("best", "last"):
        _, attrs = store.read_checkpoint("r", tag)
        assert (attrs["config"]["seed"], attrs["epoch"]) == (1, 0)
    assert [e["epoch"] for e in store.run_metrics("r")] == [1]


def test_runs_without_a_name_get_distinct_names(
    store_2d: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train_runs.time, "strftime", lambda *_: "run-20250101-000000")
    first = train(_config(store_2d, run=None, epochs=1, steps_per_epoch=1))
    second = train(_config(store_2d, run=None, epochs=1, steps_per_epoch=1))
    assert (first.run, second.run) == ("run-20250101-000000", "run-20250101-000000-2")


def test_resume_keeps_the_options_that_define_the_model(store_2d: Path) -> None:
    first = _cli(store_2d, "--epochs", "1", "--run", "rr", "--embedding-scale", "64")
    assert first.exit_code == 0, first.output
    store = ProjectStore.open(store_2d)
    stamp = store.read_checkpoint("rr", "last")[1]["time"]

    changed = _cli(store_2d, "--epochs", "3", "--run", "rr", "--resume", "--embedding-scale", "10")
    assert changed.exit_code == 1
    line = " ".join(changed.stderr.split())
    assert "run rr" in line
    assert "--embedding-scale 64, not --embedding-scale 10" in line
    assert "leave it out to keep the run's value, or start a new --run" in line
    assert ProjectStore.open(store_2d).read_checkpoint("rr", "last")[1]["time"] == stamp
    with pytest.raises(InputError, match="--seed 0, not --seed 3"):
        train(_config(store_2d, run="rr", epochs=3, resume=True, seed=3, embedding_scale=64.0))
    with pytest.raises(InputError, match="--no-tune-thresholds, not --tune-thresholds"):
        train(_config(store_2d, run="rr", epochs=3, resume=True, tune_thresholds=True))

    # Left out, the options keep the run's values; the learning rate and the batches may change.
    resumed = _cli(store_2d, "--epochs", "2", "--run", "rr", "--resume", "--lr", "1e-4")
    assert resumed.exit_code == 0, resumed.output
    store = ProjectStore.open(store_2d)
    for tag in ("best", "last"):
        _, attrs = store.read_checkpoint("rr", tag)
        assert attrs["model"]["embedding_scale"] == 64.0
    config = store.read_checkpoint("rr", "last")[1]["config"]
    assert (config["epochs"], config["learning_rate"], config["steps_per_epoch"]) == (2, 1e-4, 1)


def test_resuming_a_finished_run_says_so_and_writes_nothing(store_2d: Path) -> None:
    train(_config(store_2d, epochs=1, steps_per_epoch=1))
    stamp = ProjectStore.open(store_2d).read_checkpoint("r", "last")[1]["time"]
    again = _cli(store_2d, "--epochs", "1", "--run", "r", "--resume")
    assert again.exit_code == 0, again.output
    line = " ".join(again.stdout.split())
    assert "run r has already reached epoch 1" in line
    assert "pass --epochs larger than 1 to continue it" in line
    assert "nan" not in line
    assert ProjectStore.open(store_2d).read_checkpoint("r", "last")[1]["time"] == stamp
    as_json = _cli(store_2d, "--run", "r", "--resume", "--json")  # --epochs from the run: 1
    assert as_json.exit_code == 0, as_json.output
    summary = json.loads(as_json.stdout)
    assert (summary["start_epoch"], summary["epochs"], summary["final_loss"]) == (1, 1, None)


def test_resuming_on_a_store_prepared_with_other_crops_is_refused(store_2d: Path) -> None:
    train(_config(store_2d, run="r3", epochs=1))
    store = ProjectStore.open(store_2d)
    tensors, attrs = store.read_checkpoint("r3", "last")
    attrs["data"]["crop_size"] = [64, 64]
    store.write_checkpoint("r3", "last", tensors, attrs)
    with pytest.raises(InputError, match=r"crop_size \[64, 64\] then, \[32, 32\] now"):
        train(_config(store_2d, run="r3", epochs=2, resume=True))
