"""PP-SSL engine: encoders, the inference feature, checkpoints, preprocessing, metrics.

The library every other package builds on; it imports none of them.
"""

__version__ = "0.1.0"
