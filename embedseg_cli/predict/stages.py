"""The tasks of ``predict``, run on workers: network, blending, clustering, numbering.

1. :func:`compute_windows` normalises windows of the input, runs the network on them
   (with test-time augmentation) and keeps their outputs on disk.
2. :func:`assemble` blends the windows that touch a block into the block's outputs.
3. :func:`cluster_block` clusters a block grown by its halo and stores the seed names of
   the instances in its core.
4. :func:`number` numbers the instances 1..N in the order of their seeds' positions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import torch
from numpy.typing import NDArray

from embedseg_cli.blockwise.grid import Block, blend_profiles, relabel_keys
from embedseg_cli.data.normalise import normalise
from embedseg_cli.io.work import (
    WindowFiles,
    WorkArray,
    load_block_names,
    mark_done,
    save_block_names,
)
from embedseg_cli.method.inference import ClusterThresholds, pad_to_multiple, segment
from embedseg_cli.method.tta import forward_in_batches, predict_tta_batch
from embedseg_cli.predict.engine import loaded_model, record_network_call, release_memory
from embedseg_cli.predict.plan import Plan
from embedseg_cli.predict.source import Source

__all__ = [
    "assemble",
    "cluster_block",
    "compute_windows",
    "network_outputs",
    "number",
    "window_outputs",
]


def window_outputs(
    source: Source, origins: Sequence[tuple[int, ...]], block: str, plan: Plan
) -> list[NDArray[np.float16]]:
    """Raw outputs of windows of one shape, in float16: they wait for the blocks they touch."""
    pixels = np.stack([source.read(origin, plan.window, block) for origin in origins])
    return network_outputs(pixels, plan)


def network_outputs(pixels: NDArray[Any], plan: Plan) -> list[NDArray[np.float16]]:
    """Raw outputs of images ``pixels`` (N, C, *window), in float16, as ``plan`` runs them."""
    model, device = loaded_model(plan.model)
    # NaN and infinite intensities (masked or padded regions) become background.
    images = normalise(pixels, tuple(zip(plan.low, plan.high, strict=True)), channel_axis=1)
    tensor, crop = pad_to_multiple(torch.from_numpy(images).to(device), plan.ndim)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device.type, enabled=device.type == "cuda"):
            out: torch.Tensor = model(x)
        return out.float()

    started = time.perf_counter()
    with torch.no_grad():
        if plan.tta:
            output = predict_tta_batch(forward, tensor, plan.ndim, batch_size=plan.batch_size)
        else:
            output = forward_in_batches(forward, tensor, plan.batch_size)
    record_network_call(started, time.perf_counter())
    values = output[(slice(None), slice(None), *crop)].cpu().numpy().astype(np.float16)
    return list(values)


def compute_windows(
    source: Source,
    files: WindowFiles,
    indices: Sequence[int],
    origins: Sequence[tuple[int, ...]],
    block: str,
    plan: Plan,
) -> None:
    """Compute the windows of ``indices`` not on disk yet and write them."""
    missing = [(i, o) for i, o in zip(indices, origins, strict=True) if not files.path(i).exists()]
    if not missing:
        return
    values = window_outputs(source, [o for _, o in missing], block, plan)
    for (index, _), value in zip(missing, values, strict=True):
        files.save(index, value)
    del values
    release_memory()


def assemble(
    block: Block,
    origins: Sequence[tuple[int, ...]],
    windows: Sequence[int],
    consumers: Sequence[Sequence[str]],
    files: WindowFiles,
    plan: Plan,
    outputs: WorkArray,
    marker: Path,
    after: Sequence[None] = (),
) -> None:
    """Blend the windows that touch ``block`` into its raw outputs and store them.

    ``after`` holds the results of the window tasks that had to finish first (unused).
    """
    extent = tuple(b - a for a, b in zip(block.start, block.stop, strict=True))
    # torch rather than numpy: float16 -> float32 and the weighted sums are several times
    # faster there (vectorised and threaded), and blending is most of the time outside the
    # network.
    total = torch.zeros((outputs.shape[0], *extent), dtype=torch.float32)
    weight = torch.zeros(extent, dtype=torch.float32)
    for origin, index in zip(origins, windows, strict=True):
        values = torch.from_numpy(files.load(index))
        extent_tile = values.shape[1:]
        overlap = [min(o, e // 2) for o, e in zip(plan.overlap, extent_tile, strict=True)]
        profiles = blend_profiles(extent_tile, overlap, origin, plan.shape)
        inside = []
        source = []
        weights = torch.ones(())
        for axis, (o, n, a, b) in enumerate(
            zip(origin, extent_tile, block.start, block.stop, strict=True)
        ):
            lo, hi = max(o, a), min(o + n, b)
            inside.append(slice(lo - a, hi - a))
            source.append(slice(lo - o, hi - o))
            view = [1] * plan.ndim
            view[axis] = hi - lo
            weights = weights * torch.from_numpy(profiles[axis][lo - o : hi - o]).reshape(view)
        total[(slice(None), *inside)].addcmul_(values[(slice(None), *source)], weights)
        weight[tuple(inside)] += weights
        del values
    total /= weight.clamp_(min=1e-12)
    outputs[(slice(None), *block.slices)] = total.half().numpy()
    mark_done(marker)
    for index, users in zip(windows, consumers, strict=True):
        files.release(index, block.key, users)
    del total, weight
    release_memory()


def cluster_block(
    block: Block,
    plan: Plan,
    outputs: WorkArray,
    keys: WorkArray,
    marker: Path,
    after: Sequence[None] = (),
) -> None:
    """Cluster a block with its halo; store the seed names of the instances in its core.

    ``after`` holds the results of the tasks that had to finish first (unused).
    """
    start, stop = block.grown(plan.halo, plan.shape)
    region = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    raw = torch.from_numpy(np.asarray(outputs[(slice(None), *region)]))
    result = segment(
        raw,
        plan.ndim,
        origin=start,
        spacing=plan.spacing,
        scale=plan.scale,
        thresholds=ClusterThresholds(plan.foreground, plan.seed, plan.min_object_size),
    )
    seeds = result.seeds + np.asarray(start)
    names = np.zeros(len(seeds) + 1, np.uint64)
    if len(seeds):
        names[1:] = np.ravel_multi_index(tuple(seeds.T), plan.shape).astype(np.uint64) + 1
    core = tuple(
        slice(a - s, b - s) for a, b, s in zip(block.start, block.stop, start, strict=True)
    )
    core_names = names[result.labels[core]]
    keys[block.slices] = core_names
    save_block_names(marker, np.unique(core_names[core_names > 0]))
    del raw, result
    release_memory()


def number(
    blocks: Sequence[Block], keys: WorkArray, done: Path
) -> tuple[da.Array, NDArray[np.uint64]]:
    """Number the instances 1..N in the order of their seeds' positions.

    Returns the labels (lazy) and the seed names of labels 1..N.
    """
    names = [load_block_names(done / blk.key) for blk in blocks]
    mapping = np.unique(np.concatenate(names)) if names else np.zeros(0, np.uint64)
    labels = da.from_zarr(keys).map_blocks(relabel_keys, mapping, dtype=np.uint32)
    return labels, mapping.astype(np.uint64)
