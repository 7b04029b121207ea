"""The launcher's branch of mscluster's exception family: caught once at the CLI, printed as one line, mapped to an exit code."""


from mscluster.errors import MsclusterError


class LauncherError(MsclusterError):
    """Base of every error the launcher reports to a user as one line."""

    exit_code = 2


class ConfigError(LauncherError):
    """The cluster file is missing, not YAML, or a field is bad (the message names file, field, line)."""


class HostUnreachable(LauncherError):
    """A host cannot be reached, refuses the key, or lacks the interpreter."""

    exit_code = 3


class DiscoveryError(LauncherError):
    """A device's IP could not be found for the rank table."""


class JobDirError(LauncherError):
    """The job folder exists (and resuming was not asked for) or cannot be created."""


class RankFailed(LauncherError):
    """A rank exited non-zero or died by a signal; the job was torn down."""

    exit_code = 1


class ProgramNotFound(LauncherError):
    """A ``command:``'s program, script or folder is missing on a host (the message names host and path)."""


class NpuCheckFailed(LauncherError):
    """The NPU pre-flight found problems on Ascend hosts (one line each, naming host and device)."""

    exit_code = 3


class MindSporeMismatch(LauncherError):
    """The hosts that run MindSpore have different versions of it (the message names which host has which)."""

    exit_code = 3
