"""Persistence: the project store, model files, and external images and labels (TIFF, Zarr, OME-Zarr)."""
