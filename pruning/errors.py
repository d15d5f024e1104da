"""Exceptions with messages meant for the person at the shell."""


class ConfigError(ValueError):
    """A configuration value is not allowed; the message names the value and the allowed ones."""


class DataError(RuntimeError):
    """A dataset file is missing, corrupt, or cannot be fetched."""


class ModelLoadError(RuntimeError):
    """A model could not be located or loaded."""
