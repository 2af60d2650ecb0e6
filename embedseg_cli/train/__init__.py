"""``train``: train the branched ERF-Net on a prepared project store.

Object-centred crops are read from the stored images on the fly (one window per object from
the crop table, padded where the image is smaller), normalised with the image's percentiles
and augmented with a random element of the rotation and flip group. Adam with a polynomial
learning-rate decay over the configured number of epochs (any number). Every validation runs
the real pipeline on the validation images (network, clustering, AP_dsb at IoU 0.5) and the
best checkpoint is chosen by that. Checkpoints (``best`` and ``last``, with the optimiser
state for resuming) are stored as one array per tensor, never pickled, with everything
prediction needs: the data properties, the embedding scale, the thresholds.

A run's name is its identity in the store: a new run never silently replaces an earlier one
of the same name (``overwrite`` does, at the new run's first checkpoint), and ``resume``
refuses options that would make the run's checkpoints describe different models. A run
started from a trained model (fine-tuning) records which in its checkpoints
(``started_from``); everything else they say about the data is the store's.

The modules, by concern:

- :mod:`~embedseg_cli.train.loop`: :func:`train`, the trainer and its epochs;
- :mod:`~embedseg_cli.train.report`: :class:`TrainReport`, what :func:`train` returns;
- :mod:`~embedseg_cli.train.start`: the weights a run starts from, a trained model's when
  fine-tuning (``from_model``), checked against the store;
- :mod:`~embedseg_cli.train.crops`: sampling, reading and augmenting the training crops;
- :mod:`~embedseg_cli.train.validation`: validation with the real pipeline, the threshold;
- :mod:`~embedseg_cli.train.checkpoints`: what a checkpoint holds (tensors, attributes,
  optimiser state) and reading it back;
- :mod:`~embedseg_cli.train.runs`: run names, the claim on a name, the checks and options
  of ``resume``;
- :mod:`~embedseg_cli.train.interrupts`: Ctrl-C and SIGTERM, held while checkpoints are
  written.
"""

from embedseg_cli.train.loop import poly_learning_rate, train
from embedseg_cli.train.report import TrainReport

__all__ = ["TrainReport", "poly_learning_rate", "train"]
