"""The napari plugin: a segmentation widget and a reader (install ``embedseg-cli[napari]``).

An interface like the command line: :mod:`~embedseg_cli.napari._widget` builds the options
of ``predict`` from its controls and runs :func:`~embedseg_cli.predict.predict_array`;
:mod:`~embedseg_cli.napari._reader` opens project stores and OME-Zarr labels as layers.
napari finds both through ``napari.yaml`` (the ``napari.manifest`` entry point); importing
this package imports neither napari nor Qt.
"""
