"""Integrations with training and inference stacks; each module imports its consumer lazily."""
