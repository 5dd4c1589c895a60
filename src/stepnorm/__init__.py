"""stepnorm: per-timestep action-chunk statistics, normalization and validation for robot datasets."""

__version__ = "0.1.0"
