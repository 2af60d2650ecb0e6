"""embedseg: embedding-based instance segmentation of cells and nuclei in 2D and 3D.

The package implements EmbedSeg (Lalit, Tomancak and Jug, MIDL 2021) as a command-line tool
over a Zarr v3 project store. Importing it is cheap: the heavy dependencies (torch, zarr,
dask) load only in the modules that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
