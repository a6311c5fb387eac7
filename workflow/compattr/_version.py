"""The version of compattr, in one place: the package and its build metadata (pyproject.toml) read it here."""

__version__ = "0.9.0"
