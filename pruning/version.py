"""The package version, in a module of its own: the record writer reads it without importing the package
(whose lazy attributes load the API)."""

__version__ = "0.2.0"
