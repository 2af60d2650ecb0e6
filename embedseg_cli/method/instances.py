"""The network with its clustering as one torch module, for the exported bioimage.io model.

bioimage.io has no instance-clustering postprocessing, so the package's model wraps the
network, its activations (:mod:`embedseg_cli.method.heads`) and a TorchScript-compatible copy
of the greedy seed clustering (:func:`cluster_instances`) and outputs labels. It is a second
implementation of :func:`embedseg_cli.method.clustering.find_instances` because it must live
inside a TorchScript model; the tests keep the two equal.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from embedseg_cli.method import model as model_module
from embedseg_cli.method.heads import BANDWIDTH_GAIN, bandwidth_of, offsets_of, seediness_of
from embedseg_cli.method.model import BranchedERFNet

__all__ = ["EmbedSegInstances", "architecture_source", "cluster_instances"]


def cluster_instances(
    embedding: Tensor,
    bandwidth: Tensor,
    seed: Tensor,
    foreground_threshold: float,
    seed_threshold: float,
    min_object_size: int,
    limit: float,
) -> Tensor:
    """EmbedSeg's greedy seed clustering in TorchScript-compatible torch, for the package.

    The same greedy loop, in the same order and float64 arithmetic, as
    :func:`embedseg_cli.method.clustering.find_instances` (with ``membership_threshold``
    ``exp(-limit)`` and ``min_unclustered_fraction`` 0.5), so it gives the same instances;
    they are numbered by their seeds' flat positions, as ``predict`` numbers them. Each
    proposal tests every foreground pixel (work: seeds x foreground), which suits the
    moderate images a bioimage.io consumer feeds a model; ``embedseg predict`` uses the
    bucketed version, linear in the foreground, and tiles large volumes.

    Parameters
    ----------
    embedding, bandwidth : Tensor of shape (ndim, *S)
        Embeddings and bandwidths of every pixel (float32).
    seed : Tensor of shape (*S)
        Seed scores (float32); thresholds are compared in this dtype.
    foreground_threshold, seed_threshold : float
        Foreground where the seed is above the first; instances start at seeds at or above
        the second.
    min_object_size : int
        Instances need more pixels than this.
    limit : float
        A pixel joins a seed's proposal where ``sum_k s_k (e_k - c_k)^2 < limit``.

    Returns
    -------
    Tensor of shape (*S), int64
        Labels 1..N, 0 for the background.
    """
    n = embedding.shape[0]
    flat_seed = seed.reshape(-1)
    foreground = torch.nonzero(flat_seed > foreground_threshold).squeeze(1)
    values = flat_seed[foreground]
    points = embedding.reshape(n, -1)[:, foreground].to(torch.float64)
    widths = bandwidth.reshape(n, -1)[:, foreground].to(torch.float64)
    candidates = torch.nonzero(values >= seed_threshold).squeeze(1)
    order = torch.sort(values[candidates], descending=True, stable=True).indices
    queue: list[int] = candidates[order].tolist()
    count = foreground.shape[0]
    clustered = torch.zeros(count, dtype=torch.bool)
    labels = torch.zeros(count, dtype=torch.int64)
    accepted: list[int] = []
    for p in queue:
        if bool(clustered[p]):
            continue
        clustered[p] = True
        diff = points[0] - points[0, p]
        distance = widths[0, p] * (diff * diff)
        for k in range(1, n):
            diff = points[k] - points[k, p]
            distance = distance + widths[k, p] * (diff * diff)
        proposal = torch.nonzero(distance < limit).squeeze(1)
        size = proposal.shape[0]
        if size > min_object_size and (size - int(clustered[proposal].sum())) / size > 0.5:
            free = proposal[labels[proposal] == 0]
            labels[free] = len(accepted) + 1
            accepted.append(p)
        clustered[proposal] = True
    image = torch.zeros(flat_seed.shape[0], dtype=torch.int64)
    if len(accepted) > 0:
        seeds = foreground[torch.tensor(accepted, dtype=torch.int64)]
        rank = torch.argsort(seeds, stable=True)
        lookup = torch.zeros(len(accepted) + 1, dtype=torch.int64)
        lookup[rank + 1] = torch.arange(1, len(accepted) + 1, dtype=torch.int64)
        image[foreground] = lookup[labels]
    return image.reshape(seed.shape)


class EmbedSegInstances(nn.Module):
    """The branched ERF-Net followed by its activations, embeddings and seed clustering.

    The network of a bioimage.io package: an image batch ``(B, C, *S)`` (normalised,
    spatial extents multiples of 8) to uint-valued instance labels ``(B, 1, *S)`` (int64).
    The network's parameters are those of ``BranchedERFNet`` under ``network.``. The
    embeddings are computed as :func:`embedseg_cli.method.heads.embed` does for a whole image.

    Parameters
    ----------
    in_channels, ndim
        As for ``BranchedERFNet``.
    spacing : list of float
        Pixel spacing per axis relative to x.
    embedding_scale : float
        Pixels per embedding unit.
    foreground_threshold, seed_threshold, min_object_size
        The clustering thresholds of the checkpoint.
    """

    def __init__(
        self,
        in_channels: int,
        ndim: int,
        spacing: list[float],
        embedding_scale: float,
        foreground_threshold: float = 0.5,
        seed_threshold: float = 0.9,
        min_object_size: int = 0,
    ) -> None:
        super().__init__()
        self.network = BranchedERFNet(in_channels, 2 if ndim == 2 else 3)
        self.ndim = int(ndim)
        self.steps = [float(a) / float(embedding_scale) for a in spacing]
        self.foreground_threshold = float(foreground_threshold)
        self.seed_threshold = float(seed_threshold)
        self.min_object_size = int(min_object_size)
        self.limit = -math.log(0.5)

    def forward(self, x: Tensor) -> Tensor:
        """Labels ``(B, 1, *S)`` of an image batch ``(B, C, *S)``."""
        raw = self.network(x)
        n = self.ndim
        out: list[Tensor] = []
        for b in range(raw.shape[0]):
            offsets = offsets_of(raw[b, :n])
            bandwidth = bandwidth_of(raw[b, n : 2 * n])
            seed = seediness_of(raw[b, 2 * n])
            spatial = offsets.shape[1:]
            axes: list[Tensor] = []
            for k in range(n):
                view = [1] * n
                view[k] = spatial[k]
                pixel = torch.arange(spatial[k], dtype=torch.float64)
                coordinate = (pixel * self.steps[k]).to(offsets.dtype)
                axes.append(coordinate.view(view) + offsets[k])
            labels = cluster_instances(
                torch.stack(axes),
                bandwidth,
                seed,
                self.foreground_threshold,
                self.seed_threshold,
                self.min_object_size,
                self.limit,
            )
            out.append(labels)
        return torch.stack(out)[:, None]


def architecture_source() -> str:
    """The Python source of the package's architecture, standing alone (it needs only torch).

    embedseg's ``model.py``, then the activations of :mod:`embedseg_cli.method.heads`,
    :func:`cluster_instances` and :class:`EmbedSegInstances`.
    """
    model_source = Path(model_module.__file__).read_text(encoding="utf-8").rstrip("\n")
    functions = (offsets_of, bandwidth_of, seediness_of, cluster_instances, EmbedSegInstances)
    parts = [f"BANDWIDTH_GAIN = {BANDWIDTH_GAIN!r}", *(inspect.getsource(f) for f in functions)]
    header = (
        "\n\n# " + "-" * 88 + "\n# embedseg-cli's bioimage.io network: BranchedERFNet and "
        "the seed clustering.\n# " + "-" * 88 + "\n\nimport math  # noqa: E402\n\n\n"
    )
    return model_source + header + "\n\n\n".join(part.rstrip("\n") for part in parts) + "\n"
