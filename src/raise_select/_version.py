"""The package version (one place; the package face and saved selectors read it)."""

__version__ = "0.1.0"
