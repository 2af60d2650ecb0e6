"""Package a trained run as a built-in model, with its AP measured on held-out test images.

    python scripts/build_pretrained.py STORE --run RUN --test ../shared/data/dsb2018-fluo/test \
        --name dsb2018-fluo --training-command "embedseg train ..."

Predicts the test images (with and without test-time augmentation) from the run's best
checkpoint, evaluates them against the test masks, and writes
``embedseg_cli/pretrained/NAME.npz``: float16 weights, the checkpoint's attributes and
what ``embedseg models`` shows (training data, license, the AP tables, the command).
The labels are then predicted again from the written file, so the AP shipped is the AP of
the float16 weights.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from embedseg_cli.config import EvaluateConfig, PredictConfig
from embedseg_cli.evaluate import evaluate
from embedseg_cli.io.models import read_model, write_compact
from embedseg_cli.predict import predict

PACKAGE = Path(__file__).resolve().parents[1] / "embedseg_cli" / "pretrained"


def _scores(model: str, test: Path, tta: bool, folder: Path) -> dict[str, list[float]]:
    out = folder / ("tta" if tta else "plain")
    predict(PredictConfig(input=test / "images", model=model, out=out, tta=tta, device="cpu"))
    report = evaluate(EvaluateConfig(prediction=out, ground_truth=test / "masks"))
    return {
        "thresholds": list(report.scores.thresholds),
        "per_image": [round(s.ap_dsb, 4) for s in report.scores.per_image],
        "pooled": [round(s.ap_dsb, 4) for s in report.scores.pooled],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("--run", required=True)
    parser.add_argument("--test", type=Path, required=True, help="folder with images/ and masks/")
    parser.add_argument("--name", required=True)
    parser.add_argument("--description", default="2D fluorescence nuclei (single channel)")
    parser.add_argument(
        "--training-data", default="dsb2018-fluo/train (Kaggle DSB 2018, stage 1 fluorescence)"
    )
    parser.add_argument("--license", default="data CC0; weights CC0")
    parser.add_argument("--training-command", default="")
    args = parser.parse_args()
    trained = read_model(args.store, run=args.run)
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
