"""User-facing errors: each carries one line saying what is wrong and how to fix it.

The CLI turns a :class:`MetalearnError` into that line and exit code 2; any other exception is
a bug and keeps its traceback.
"""


class MetalearnError(Exception):
    """A problem the user can fix (bad config, missing data, unreadable checkpoint)."""


class ConfigError(MetalearnError):
    """A config value is invalid or two choices do not fit together."""


class InUse(ConfigError):
    """Another live process holds the run dir's lock: nothing of this command may be written there."""


class DataError(MetalearnError):
    """A data set is missing, incomplete or too small for the requested episodes."""


class CheckpointError(MetalearnError):
    """A checkpoint is missing, corrupt, foreign or from an incompatible version."""


class WriteError(MetalearnError):
    """A file could not be written (no space, no permission); its previous version is kept."""


class FileSystemError(MetalearnError):
    """A file or folder could not be read or written (missing, no permission, not a folder, ...)."""


class Interrupted(MetalearnError):
    """Training stopped by SIGINT/SIGTERM after saving ``last.pt``."""

    def __init__(self, signal_name: str, message: str) -> None:
        super().__init__(message)
        self.signal_name = signal_name

    def __reduce__(self) -> tuple:
        """Rebuilt whole in another process: a launcher's worker (joblib) sends its job's stop back pickled, and
        the default rebuild would call ``__init__`` with the message alone."""
        return _rebuilt, (type(self), self.args, self.__dict__)


def _rebuilt(cls: type, args: tuple, state: dict) -> BaseException:
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class PeerLost(Interrupted):
    """Another process of a torchrun run died (killed, out of memory): this one stopped as after a signal,
    keeping its last checkpoint, so the run resumes; the exit code is 1, not a signal's."""

    def __init__(self, message: str) -> None:
        super().__init__("peer", message)


class Diverged(MetalearnError):
    """A NaN/Inf meta-loss or meta-gradient under ``trainer.nan_policy=stop``."""


class InternalError(MetalearnError):
    """A bug: its traceback is in a file, the console gets one line (exit code 1)."""
