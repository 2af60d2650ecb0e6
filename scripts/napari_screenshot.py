"""The screenshot of the napari widget in docs/napari.md: a real image, segmented by the widget.

    python scripts/napari_screenshot.py [--image IMAGE.tif] [--out docs/images/napari-widget.png]

On a machine without a display, run it on a virtual one: ``xvfb-run -a python
scripts/napari_screenshot.py`` (napari draws with OpenGL, which Qt's offscreen platform
lacks). The default image is a test image of ``../shared/data/dsb2018-fluo`` (CC0), which
the built-in model ``dsb2018-fluo`` was not trained on. Needs ``pip install -e '.[napari]'``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import napari
import tifffile
from qtpy.QtWidgets import QApplication

from embedseg_cli.napari._widget import SegmentWidget

ROOT = Path(__file__).resolve().parents[1]
IMAGE = (
    ROOT.parent
    / "shared/data/dsb2018-fluo/test/images"
    / "da31f2aa8601afec5c45180a2c448cb9c4a8ec7b35e75190d6ba3588f69058c8.tif"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=IMAGE)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/images/napari-widget.png")
    args = parser.parse_args()
    if not args.image.is_file():
        parser.error(f"{args.image} does not exist: give --image (a 2D nuclei TIFF)")

    viewer = napari.Viewer(title="napari: embedseg", show=True)
    viewer.window.resize(1500, 680)
    viewer.add_image(tifffile.imread(args.image), name="nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("embedseg-cli", "Segment (EmbedSeg)")
    assert isinstance(widget, SegmentWidget)

    started = time.perf_counter()
    widget.segment()
    while widget.running:
        QApplication.processEvents()
        time.sleep(0.05)
    print(f"{widget.status.value} ({time.perf_counter() - started:.1f} s)")
    labels = viewer.layers["nuclei labels"]
    labels.opacity = 0.45
    viewer.layers.selection.active = labels
    QApplication.processEvents()
    viewer.reset_view()  # fit the image to the canvas that the dock widget left
    QApplication.processEvents()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(path=str(args.out), canvas_only=False, flash=False)
    print(f"wrote {args.out}")
    viewer.close()


if __name__ == "__main__":
    main()
