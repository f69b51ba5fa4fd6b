"""anydistill: turn big vision models into small, fast students with mostly unlabeled images."""

from anydistill.errors import AnydistillError, ConfigError, DataError

__version__ = "0.1.0"

__all__ = ["AnydistillError", "ConfigError", "DataError", "__version__"]
