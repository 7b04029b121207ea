"""The trainer's branch of mscluster's exception family: caught once at the CLI, printed as one line."""

from mscluster.errors import MsclusterError


class TrainerError(MsclusterError):
    """Base of every error the trainer reports to a user as one line."""

    exit_code = 2


class ConfigError(TrainerError):
    """A training setting is unknown or has a bad value."""


class DataError(TrainerError):
    """The dataset folder or one of its files is missing or malformed."""


class CheckpointError(TrainerError):
    """A checkpoint is missing, corrupt or incompatible with the settings."""


class ImageError(TrainerError):
    """An image given to ``predict`` cannot be read."""
