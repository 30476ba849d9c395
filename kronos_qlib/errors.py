"""Errors that tell the user what is wrong with their input, instead of a traceback from deep inside torch."""


class KronosInputError(ValueError):
    """Bad input data or arguments; the message names the column, instrument, date or argument."""


class CheckpointError(OSError):
    """A checkpoint folder, file or Hub repository that cannot be used; the message names it."""


class ConfigError(ValueError):
    """A configuration file or section that cannot be used; the message names the key."""


class TrainingError(RuntimeError):
    """Training cannot go on (diverged, inconsistent ranks or files); the message says what to do."""
