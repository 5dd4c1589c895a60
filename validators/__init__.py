"""Sim-to-real validators and the training gate (installed as ``stepnorm.validators``)."""
