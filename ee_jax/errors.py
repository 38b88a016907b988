"""Errors a user can cause, each with one message naming the file or key at fault."""


class DataError(ValueError):
  """Bad input data: missing or unreadable file, wrong bands, mismatched grids, ..."""


class ConfigError(ValueError):
  """A config value or combination of values that cannot work."""
