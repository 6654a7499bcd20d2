"""The version of optax_lr: the one place it is written.

``pyproject.toml`` reads it (``[tool.setuptools.dynamic]``) for the
distribution's metadata, and ``optax_lr.__version__`` imports it.
"""

__version__ = "0.1.0"
