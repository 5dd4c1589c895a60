"""Dataset readers: RLDS/TFDS and LeRobot, yielding ``Episode`` objects."""
