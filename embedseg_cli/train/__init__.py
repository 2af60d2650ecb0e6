"""``train``: train the branched ERF-Net on a prepared project store (see :mod:`.loop`)."""

from embedseg_cli.train.loop import TrainReport, poly_learning_rate, train

__all__ = ["TrainReport", "poly_learning_rate", "train"]
