"""The one exception family of mscluster: every error a user sees as one line derives from it.

``mscluster_cli.main`` catches ``MsclusterError`` once, prints ``mscluster <command>: error: <message>``
and exits with the error's ``exit_code``. The launcher's family (``launcher.errors``) and the
trainer's (``trainer.errors``) are branches of it. Imports nothing.
"""


class MsclusterError(Exception):
    """Base of every error reported to a user as one line; ``exit_code`` is the process's exit status."""

    exit_code = 2


class RankEnvError(MsclusterError):
    """The environment a rank was started with is inconsistent (a bad RANK_ID, MS_WORKER_NUM, ...)."""
