"""The geometry of large inputs: the window and block grids, blending weights and resampling."""
