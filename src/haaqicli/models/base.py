"""The contract between the engine (and the API) and a model architecture, in one base class.

A model takes a waveform (B, T) at `sample_rate` and an audiogram (B, 8) in dB HL and returns a
`HAAQINetOutput`. It is split in two so the engine can run the expensive part once per window and the
cheap part once per profile: `encode(wave)` gives the encoder's hidden states (a list of (B, F, D)),
`head.output(hidden, features, audiogram)` the scores. `forward` is the two in a row, shared by every
architecture. Each architecture names itself (`arch`), builds from and reports its config
(`from_config`, `config`), and ships one default config (`default_config`), beside its definition;
subclasses register themselves by `arch` (timm's style), so the registry finds them by name.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

# arch name -> class, filled as the architectures' modules are imported
ARCHITECTURES: dict[str, type[HAAQIModel]] = {}


@dataclass
class HAAQINetOutput:
    clip: Tensor  # (B,) in [0, 1]
    frames: Tensor  # (B, F) in [0, 1]
    hidden: list[Tensor] = field(default_factory=list)  # encoder hidden states, frame level (B, F, D)
    clip_logit: Tensor | None = None  # (B,)
    frame_logits: Tensor | None = None  # (B, F)
    terms: Tensor | None = None  # (B, 4) sub-terms (models.terms.TERMS order), with head.terms
    frame_terms: Tensor | None = None  # (B, F, 4)


class HAAQIModel(nn.Module):
    """Base class of the HAAQI architectures (see the module docstring)."""

    arch: ClassVar[str] = ""
    DEFAULT_CONFIG: ClassVar[Mapping[str, Any]] = {}
    # On the CPU, leave one core to the decoding that runs beside the network (`haaqi score`): true for
    # a network cheap enough that decoding, not the network, bounds a folder.
    LEAVES_CORE_FOR_DECODING: ClassVar[bool] = False
    encoder: nn.Module  # with `num_layers`: encode() gives num_layers + 1 hidden states
    head: nn.Module  # `output(hidden, features, audiogram)` -> HAAQINetOutput (haaqinet.HAAQIHead)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.arch:
            ARCHITECTURES[cls.arch] = cls

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        """The architecture's shipped configuration (a copy: callers may edit it)."""
        return copy.deepcopy(dict(cls.DEFAULT_CONFIG))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> HAAQIModel:
        raise NotImplementedError

    @property
    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def sample_rate(self) -> int:
        raise NotImplementedError

    def encode(self, wave: Tensor) -> list[Tensor]:
        """wave (B, T) at `sample_rate` -> the head's features: the encoder's hidden states, each
        (B, F, D), followed by the band levels when the head conditions on them."""
        raise NotImplementedError

    def forward(self, wave: Tensor, audiogram: Tensor) -> HAAQINetOutput:
        """wave (B, T) at `sample_rate` (24 kHz for our models), audiogram (B, 8) dB HL."""
        features = self.encode(wave)
        return self.head.output(features[: self.encoder.num_layers + 1], features, audiogram)
