"""``predict``: instance labels for images and volumes of any size with a trained model.

One code path serves every size; a small image is a volume of one block.

1. **Network.** The (normalised) input is covered by a global grid of overlapping windows.
   Each window goes through the network (averaged over rotations and flips with ``tta``);
   overlapping outputs are blended with weights that fall off towards window edges. Each
   block of the output gathers the windows that touch it and stores its part of the raw
   outputs (float16). The grid depends only on the volume, so a pixel's output does not
   depend on the blocks.
2. **Clustering.** Each block clusters its outputs grown by a halo larger than the largest
   object, with embeddings in whole-volume coordinates. An instance is named after the
   volume position of its seed, and each block writes the names of the instances in its own
   core; an instance found from two blocks gets the same name in both.
3. **Labels.** The names are numbered 1..N in the order of their seeds' positions: the same
   input gives the same uint32 labels with any block size, worker count or engine.

Each stage is a dask graph run on dask's threaded scheduler, a local ``dask.distributed``
cluster (``workers``) or an existing one (``scheduler``); each process loads the model once.
Finished blocks are recorded, so ``resume`` continues an interrupted run where it stopped.

The modules, by stage:

- :mod:`~embedseg_cli.predict.workflow`: :func:`predict`, the run of each job in turn;
- :mod:`~embedseg_cli.predict.arrays`: :func:`predict_array`, labels for an array in memory
  (the napari plugin's way in), through :func:`predict` on a scratch copy;
- :mod:`~embedseg_cli.predict.jobs`: the inputs and outputs of a run, and its claim on them;
- :mod:`~embedseg_cli.predict.plan`: the model's settings, windows, blocks, memory budget;
- :mod:`~embedseg_cli.predict.resample`: inputs brought to the model's voxel size;
- :mod:`~embedseg_cli.predict.objectsize`: the scale that brings an input's objects to the
  sizes the model learned (``object_size``), estimated on a first pass of the network;
- :mod:`~embedseg_cli.predict.volume`: one volume's plan and dask graph;
- :mod:`~embedseg_cli.predict.source` and :mod:`~embedseg_cli.predict.stages`: reading
  windows, the network, blending, clustering and numbering;
- :mod:`~embedseg_cli.predict.engine`: where tasks run, the model once per process;
- :mod:`~embedseg_cli.predict.table`, :mod:`~embedseg_cli.predict.dryrun`,
  :mod:`~embedseg_cli.predict.recluster`: the per-object table, ``--dry-run`` and
  ``--recluster``.

The work folder's format is :mod:`embedseg_cli.io.work`.
"""

from embedseg_cli.predict.arrays import predict_array
from embedseg_cli.predict.plan import DEFAULT_MODEL, memory_budget
from embedseg_cli.predict.report import PredictReport
from embedseg_cli.predict.workflow import predict

__all__ = ["DEFAULT_MODEL", "PredictReport", "memory_budget", "predict", "predict_array"]
