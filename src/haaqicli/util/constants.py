"""Conventions shared by every module. Change one here and every model must be retrained."""

# The eight audiogram frequencies HAAQI-Net and the Clarity challenges use (Hz).
AUDIOGRAM_FREQUENCIES: tuple[int, ...] = (250, 500, 1000, 2000, 3000, 4000, 6000, 8000)

# Valid hearing levels (dB HL) for a profile entry.
HL_MIN: float = -10.0
HL_MAX: float = 120.0

# HAAQI's ear model runs at 24 kHz, so the models see exactly the band the label sees.
MODEL_SAMPLE_RATE: int = 24_000

# Label convention (README.md, Levels): the reference is presented at 65 dB SPL, i.e.
# compute_haaqi(..., level1 = 65 - 20*log10(rms(reference))).
DEFAULT_SPL: float = 65.0

# Digital calibration of model input: a waveform whose RMS is REFERENCE_RMS is heard at
# DEFAULT_SPL. In training, processed audio is scaled by REFERENCE_RMS / rms(reference),
# so the model also sees level changes that the degradation made.
REFERENCE_RMS: float = 0.1

# Clip length the models are trained on, and the window/hop used to chunk long files.
CLIP_SECONDS: float = 6.0
WINDOW_SECONDS: float = 6.0
HOP_SECONDS: float = 4.5
