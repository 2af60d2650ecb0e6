"""``export``: trained models and predicted labels in the formats the field uses.

Models (:func:`export_model`):

- ``bioimageio``: a bioimage.io model package (``.zip``, spec format 0.5) that produces
  instance labels by itself, see :func:`export_model` for what it holds and why the seed
  clustering is a custom postprocessing step;
- ``torchscript``: one TorchScript file of the network with the model's attributes inside
  (``embedseg predict --model model.pt`` reads it);
- ``onnx``: one ONNX file of the network (batch and spatial axes dynamic; spatial extents
  must be multiples of 8), the attributes in its metadata.

Labels (:func:`export_labels`): a label image (TIFF, Zarr, OME-Zarr or a store's predictions)
as TIFF, OME-Zarr labels, a per-object table (CSV) or a preview picture (PNG).

Every output is written all or nothing: into a hidden sibling first, then renamed into
place; an existing output is replaced only with ``overwrite``, only where it is an earlier
output of the same kind (never a folder of other files, nor one that holds an input), and is
left untouched when anything fails before that rename (:mod:`.outputs`).

The models are written by :mod:`.model` (TorchScript, ONNX) and :mod:`.bioimageio` (the
package), the labels by :mod:`.labels`.
"""

from embedseg_cli.export.bioimageio import CITATION
from embedseg_cli.export.labels import LabelsExportReport, export_labels
from embedseg_cli.export.model import ModelExportReport, export_model

__all__ = [
    "CITATION",
    "LabelsExportReport",
    "ModelExportReport",
    "export_labels",
    "export_model",
]
