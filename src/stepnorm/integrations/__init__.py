"""Per-timestep normalization inside training and inference stacks, one small module per consumer.

Each module is importable without its consumer installed (it imports the consumer lazily, or
follows its protocol duck-typed) and applies stepnorm's one normalizer (``stepnorm.normalize``).
See docs/integrations.md for the lines to change in each consumer's config.
"""
