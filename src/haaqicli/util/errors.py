"""Errors whose message is one clear line for the user (the CLI prints it, never a traceback)."""


class HaaqiError(Exception):
    """Base class: str(error) is a complete one-line message naming the file, line or option."""


class AudioError(HaaqiError):
    """A file could not be decoded or is unusable (empty, silent, not audio)."""


class ProfileError(HaaqiError):
    """An audiogram profile is malformed; the message names file and line."""


class ModelError(HaaqiError):
    """Weights missing, corrupt or failing their sha256 check."""


class ToolMissingError(HaaqiError):
    """An external program (ffmpeg, fluidsynth) is needed but not installed."""
