"""stepnorm: per-timestep action-chunk statistics, normalization and validation for robot datasets."""

import os

# TensorFlow is imported lazily by the RLDS code; keep its start-up quiet and its CPU numerics
# deterministic (oneDNN reorders float reductions). Users can still override both.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"
