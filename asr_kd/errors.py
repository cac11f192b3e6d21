"""Typed errors raised by asr-kd.

Every error message names the file (and line or utterance where there is one), what is wrong and,
where possible, what to do about it. The CLI prints ``AsrKdError`` messages without a traceback and
exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class AsrKdError(Exception):
    """Base class of all errors that are the user's input, not a bug."""


class ConfigError(AsrKdError):
    """A YAML config or command-line override is invalid (unknown key, wrong type, bad value)."""


class DataDirError(AsrKdError):
    """A Kaldi-style data dir is malformed. ``path`` and ``line`` point at the offending line."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path = path
        self.line = line
        self.problem = message


class AudioError(AsrKdError):
    """An utterance's audio cannot be used. Subclasses say why; ``utt_id`` and ``path`` say where."""

    reason = "bad audio"

    def __init__(self, message: str, utt_id: str | None = None, path: str | None = None):
        parts = []
        if utt_id is not None:
            parts.append(f"utterance {utt_id!r}")
        if path is not None:
            parts.append(f"file {path!r}")
        prefix = (", ".join(parts) + ": ") if parts else ""
        super().__init__(prefix + message)
        self.utt_id = utt_id
        self.path = path
        self.detail = message


class AudioMissingError(AudioError):
    reason = "missing"


class AudioUnreadableError(AudioError):
    reason = "unreadable"


class AudioEmptyError(AudioError):
    reason = "empty"


class AudioNonFiniteError(AudioError):
    reason = "nan_or_inf"


class AudioChannelError(AudioError):
    reason = "multi_channel"


class AudioRateError(AudioError):
    reason = "wrong_rate"


class AudioTooLongError(AudioError):
    reason = "too_long"


class UnitsError(AsrKdError):
    """Units (tokens.txt / BPE model) are malformed, or two components disagree on units."""


class ModelDirError(AsrKdError):
    """A model dir is missing a file, is corrupt, or fails its fingerprint check."""


class StoreError(AsrKdError):
    """A soft-target store is corrupt, incomplete or incompatible with what uses it."""


def remote_error_message(exc: BaseException) -> str | None:
    """The message of an asr-kd error raised in a Ray worker or actor, found in ``exc`` (what the driver
    got: Ray Train's ControllerError/WorkerGroupError, Ray core's RayTaskError/ActorDiedError); None if
    the failure was not one of ours. Lets the CLI print the cause instead of Ray's nested tracebacks."""
    import re

    seen: set[int] = set()
    todo: list = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen or not isinstance(e, BaseException):
            continue
        seen.add(id(e))
        if isinstance(e, AsrKdError):
            return str(e.args[0]) if e.args else str(e)
        todo.extend([e.__cause__, e.__context__, getattr(e, "cause", None), getattr(e, "controller_failure", None)])
        todo.extend((getattr(e, "worker_failures", None) or {}).values())
    # an actor's creation error reaches the driver as text only: "asr_kd.xxx.SomeError: message"
    found = re.search(r"asr_kd\.[\w.]+Error: (.+)", str(exc))
    return found.group(1).strip() if found else None
