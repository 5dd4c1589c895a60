"""Beam pipelines (installed as ``stepnorm.pipelines``): thin PTransforms over ``stepnorm``."""
