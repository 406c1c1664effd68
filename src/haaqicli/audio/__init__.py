"""Audio from files to model-ready windows: `io` finds, decodes and writes files, `resample` changes the
rate (one filter for training and inference), `level` meters and calibrates the presentation level,
`windows` plans and cuts the windows; `windows.calibrated_windows` is the one call that turns a file
into calibrated windows. The names below are the package's public interface."""

from __future__ import annotations

from haaqicli.audio.io import (
    AUDIO_EXTENSIONS,
    DEFAULT_BLOCK_FRAMES,
    MIN_DURATION_S,
    MIN_SAMPLE_RATE,
    ArraySource,
    AudioInfo,
    AudioSource,
    BlockSource,
    DownmixWarning,
    InputFile,
    as_source,
    decode,
    decode_with_info,
    discover,
    downmix_message,
    open_audio,
    require_duration,
    write_audio,
)
from haaqicli.audio.level import (
    SILENCE_RMS,
    LevelMeter,
    channel_rms,
    overall_rms,
    presentation_gain,
    target_rms,
)
from haaqicli.audio.resample import StreamResampler, resample, resampled_length
from haaqicli.audio.windows import (
    CalibratedWindows,
    Window,
    calibrated_windows,
    file_gain,
    iter_windows,
    plan_windows,
)

__all__ = [
    "AUDIO_EXTENSIONS", "DEFAULT_BLOCK_FRAMES", "MIN_DURATION_S", "MIN_SAMPLE_RATE", "SILENCE_RMS",
    "ArraySource", "AudioInfo", "AudioSource", "BlockSource", "CalibratedWindows", "DownmixWarning",
    "InputFile", "LevelMeter", "StreamResampler", "Window", "as_source", "calibrated_windows", "channel_rms", "file_gain",
    "decode", "decode_with_info", "discover", "downmix_message", "iter_windows", "open_audio",
    "overall_rms", "plan_windows", "presentation_gain", "require_duration", "resample", "resampled_length",
    "target_rms", "write_audio",
]
