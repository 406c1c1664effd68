"""Model registry (timm-like): `weights/manifest.json` + one `.safetensors` file per model.

Manifest format (format_version 1)::

    {"format_version": 1,
     "models": {
       "teacher": {"name": "teacher", "arch": "haaqinet", "config": {...}, "file": "teacher.safetensors",
                   "sha256": "<hex>", "n_params": 6300000, "sample_rate": 24000, "window_s": 6.0,
                   "training": {...free-form summary...}, "metrics": {"val_lcc": ...}, "created": "ISO-8601"},
       "distilled": {...}}}

Weights are safetensors only (no pickle), and the file's sha256 is checked before anything is read.
torch and the architectures are imported by the functions that need them, so reading the manifest
(`haaqi models`, the model's sha256 for --resume) does not cost torch's import.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from haaqicli.util.atomic import atomic_write
from haaqicli.util.constants import MODEL_SAMPLE_RATE, WINDOW_SECONDS
from haaqicli.util.devices import check_precision, model_device, resolve_device
from haaqicli.util.errors import ModelError
from haaqicli.util.hashing import content_hash as sha256_file  # one streamed sha256 for the project

if TYPE_CHECKING:
    import torch
    from torch import nn

MANIFEST = "manifest.json"
FORMAT_VERSION = 1

def architectures() -> dict[str, type[nn.Module]]:
    """Model classes by their `arch` name (imports torch): each registers itself (models.base)."""
    # lazy: torch only where this path runs (start-up time)
    from haaqicli.models import haaqinet, student  # noqa: F401  (importing them registers them)
    from haaqicli.models.base import ARCHITECTURES

    return dict(ARCHITECTURES)


@dataclass
class ModelInfo:
    name: str
    arch: str
    config: dict[str, Any]
    file: str
    sha256: str = ""
    n_params: int = 0
    sample_rate: int = MODEL_SAMPLE_RATE
    window_s: float = WINDOW_SECONDS
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], origin: str) -> ModelInfo:
        required = ("name", "arch", "config", "file", "sha256")
        missing = [k for k in required if k not in d]
        if missing:
            raise ModelError(f"{origin}: model entry lacks {', '.join(missing)}")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_weights_dir() -> Path:
    """Where the shipped weights are: $HAAQI_WEIGHTS if set; in a source checkout (editable install or
    PYTHONPATH=src) `weights/` at its top, the one copy in git; in an installed wheel the copy it carries as
    the data package `haaqicli.weights` (setup.py maps that package to the top-level `weights/`)."""
    env = os.environ.get("HAAQI_WEIGHTS")
    if env:
        return Path(env)
    package = Path(__file__).resolve().parents[1]  # .../haaqicli
    checkout = package.parents[1]  # the repository root when the package sits in <root>/src/
    if package.parent.name == "src" and (checkout / "pyproject.toml").is_file():
        return checkout / "weights"
    return package / "weights"


def build_model(arch: str, config: Mapping[str, Any]) -> nn.Module:
    """Fresh (untrained) model of an architecture from its config dict."""
    archs = architectures()
    if arch not in archs:
        raise ModelError(f"unknown model architecture {arch!r} (known: {', '.join(sorted(archs))})")
    try:
        return archs[arch].from_config(copy.deepcopy(dict(config)))  # type: ignore[attr-defined]
    except (KeyError, TypeError) as exc:
        raise ModelError(f"bad config for architecture {arch!r}: {exc}") from None


def count_params(model: nn.Module, inference_only: bool = True) -> int:
    """Unique parameters; the student's distillation heads are not part of inference and not counted."""
    return sum(p.numel() for n, p in model.named_parameters()
               if not (inference_only and n.startswith("distill_heads.")))


def _read_manifest(weights_dir: Path) -> dict[str, Any]:
    path = weights_dir / MANIFEST
    if not path.is_file():
        return {"format_version": FORMAT_VERSION, "models": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise ModelError(f"{path}: manifest must be an object with a 'models' object")
    if data.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ModelError(f"{path}: manifest format {data['format_version']} is newer than this haaqi")
    return data


def list_models(weights_dir: str | Path | None = None) -> list[ModelInfo]:
    wd = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    data = _read_manifest(wd)
    return [ModelInfo.from_dict(v, str(wd / MANIFEST)) for _, v in sorted(data["models"].items())]


def get_info(name: str, weights_dir: str | Path | None = None) -> ModelInfo:
    wd = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    data = _read_manifest(wd)
    if name not in data["models"]:
        known = ", ".join(sorted(data["models"])) or "none"
        raise ModelError(f"{wd / MANIFEST}: no model named {name!r} (available: {known})")
    return ModelInfo.from_dict(data["models"][name], str(wd / MANIFEST))




def _load_safetensors(path: Path, expected_sha: str) -> dict[str, torch.Tensor]:
    # lazy: safetensors only where this path runs (start-up time)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelError(f"{path}: weights file missing")
    actual = sha256_file(path)
    if expected_sha and actual != expected_sha.lower():
        raise ModelError(f"{path}: sha256 mismatch (manifest {expected_sha[:12]}..., file {actual[:12]}...); "
                         "the file is corrupt or not the one the manifest describes")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable safetensors file ({exc})") from None


def _apply_state(model: nn.Module, state: Mapping[str, torch.Tensor], origin: str,
                 skip_prefix: str | None = None) -> None:
    own = {k: v for k, v in model.state_dict().items() if skip_prefix is None or not k.startswith(skip_prefix)}
    state = {k: v for k, v in state.items() if skip_prefix is None or not k.startswith(skip_prefix)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ModelError(f"{origin}: weights do not match the manifest config "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ModelError(f"{origin}: {k} has shape {tuple(v.shape)}, config expects {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=skip_prefix is None)


def load_model(name: str, device: str | torch.device = "cpu", beats_checkpoint: str | Path | None = None,
               weights_dir: str | Path | None = None, precision: str = "float32") -> tuple[nn.Module, ModelInfo]:
    """Load a registered model in eval mode. With `beats_checkpoint`, the teacher's encoder comes from an
    official BEATs checkpoint (config and weights) and the HAAQI head from our weights - which only works
    for a head trained on that encoder (same layer count and width). `precision` "int8" runs the
    encoder's linear layers on int8 (models.precision; CPU only, and "auto" means the CPU then)."""
    # lazy: torch only where this path runs (start-up time)
    from haaqicli.models.beats import read_beats_checkpoint
    from haaqicli.models.haaqinet import HAAQINet
    from haaqicli.models.precision import quantize_encoder

    wd = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    info = get_info(name, wd)
    dev = model_device(device, check_precision(precision))
    path = wd / info.file
    if beats_checkpoint is None:
        model = build_model(info.arch, info.config)
        _apply_state(model, _load_safetensors(path, info.sha256), str(path))
    else:
        if info.arch != HAAQINet.arch:
            raise ModelError(f"--beats-checkpoint needs a BEATs-based model; {name!r} is {info.arch!r}")
        enc_cfg, enc_state = read_beats_checkpoint(beats_checkpoint)
        if enc_cfg.finetuned_model:
            raise ModelError(f"{beats_checkpoint}: a fine-tuned (classifier) BEATs checkpoint; "
                             "use a pre-trained one (e.g. BEATs_iter3)")
        # Official checkpoints run at 16 kHz; keep that, the predictor resamples inputs to model.sample_rate.
        config = {"encoder": enc_cfg.to_dict(), "head": info.config["head"]}
        model = build_model(HAAQINet.arch, config)
        head_state = {k: v for k, v in _load_safetensors(path, info.sha256).items() if k.startswith("head.")}
        own_head = {k: v for k, v in model.state_dict().items() if k.startswith("head.")}
        bad = [k for k in own_head if k not in head_state or head_state[k].shape != own_head[k].shape]
        if bad:
            raise ModelError(
                f"--beats-checkpoint {beats_checkpoint}: the {name!r} head was trained for a "
                f"{info.config['encoder'].get('encoder_layers')}-layer, "
                f"{info.config['encoder'].get('encoder_embed_dim')}-dim encoder, this checkpoint has "
                f"{enc_cfg.encoder_layers} layers x {enc_cfg.encoder_embed_dim}; train a head for it "
                "(haaqi train --beats-checkpoint) first")
        # lazy: torch only where this path runs (start-up time)
        from haaqicli.models.beats import load_beats_state

        load_beats_state(model.encoder, enc_state, str(beats_checkpoint))
        model.load_state_dict({**model.state_dict(), **head_state}, strict=True)
        info = ModelInfo(**{**info.to_dict(), "config": config, "sample_rate": enc_cfg.sample_rate,
                            "name": f"{name}+beats:{Path(beats_checkpoint).name}"})
    model = model.to(dev).eval()
    return (quantize_encoder(model) if precision == "int8" else model), info


def _unshared(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict safetensors accepts: cloned, so shared tensors (BEATs' relative bias table, one per
    layer) become separate entries, on the CPU and contiguous."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_model(model: nn.Module, info: ModelInfo, weights_dir: str | Path | None = None) -> ModelInfo:
    """Write `<weights_dir>/<info.file>` (safetensors) and upsert the manifest entry atomically; returns the
    completed info (sha256, n_params, created, config and arch filled from the model)."""
    # lazy: safetensors only where this path runs (start-up time)
    from safetensors.torch import save

    wd = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    wd.mkdir(parents=True, exist_ok=True)
    if not info.file.endswith(".safetensors") or Path(info.file).name != info.file:
        raise ModelError(f"model file {info.file!r}: must be a plain *.safetensors file name")
    state = _unshared(model.state_dict())
    # One metadata key holding sorted JSON: safetensors writes a metadata map in no fixed order, so two
    # keys would give identical weights different bytes (and sha256) from one process to the next.
    identity = json.dumps({"arch": getattr(model, "arch", info.arch), "name": info.name}, sort_keys=True)
    blob = save(state, metadata={"haaqi": identity})
    atomic_write(wd / info.file, lambda tmp: tmp.write_bytes(blob), durable=True)  # must survive a crash
    done = ModelInfo(**{**info.to_dict(),
                        "arch": getattr(model, "arch", info.arch),
                        "config": getattr(model, "config", info.config),
                        "sha256": hashlib.sha256(blob).hexdigest(),
                        "n_params": count_params(model),
                        "sample_rate": int(getattr(model, "sample_rate", info.sample_rate)),
                        "created": info.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    data = _read_manifest(wd)
    data["format_version"] = FORMAT_VERSION
    data["models"][done.name] = done.to_dict()
    _write_manifest(wd, data)
    return done


def promote_model(source: str, source_dir: str | Path, name: str, weights_dir: str | Path | None = None) -> ModelInfo:
    """Register model `source` of `source_dir` (an experiment's registry, e.g. an ablation row) as `name`
    in `weights_dir`: weights loaded with their sha256 checked and saved under the new name, with the
    training record kept and where it came from added. The calibration stays behind: it belongs to the
    old sha256 (the name is part of the file, so the bytes change) and is fitted again for the new one."""
    model, info = load_model(source, weights_dir=source_dir)
    training = {**info.training, "promoted_from": {"name": source, "sha256": info.sha256}}
    return save_model(model, ModelInfo(name=name, arch=info.arch, config=info.config, file=f"{name}.safetensors",
                                       training=training, metrics=dict(info.metrics), created=info.created),
                      weights_dir)


def average_models(sources: Sequence[tuple[str | Path, str]], name: str, weights_dir: str | Path) -> ModelInfo:
    """Register as `name` in `weights_dir` the mean of the weights of `sources` ((registry folder, name)
    pairs, each loaded with its sha256 checked): a uniform "model soup" (Wortsman et al. 2022). Only
    models fine-tuned from one start belong together (they sit in one basin of the loss, where the mean
    of their weights is a model too); all must share an architecture and config. The training record
    keeps each source's sha256, training record and metrics."""
    if len(sources) < 2:
        raise ModelError("averaging needs two or more models")
    # lazy: torch only where this path runs (start-up time)
    import torch

    loaded = [(folder, source, *load_model(source, weights_dir=folder)) for folder, source in sources]
    _, _, model, first = loaded[0]
    for folder, source, _, info in loaded[1:]:
        if info.arch != first.arch or info.config != first.config:
            raise ModelError(f"{folder}/{source}: another architecture or config than {sources[0][0]}/{sources[0][1]}")
    states = [m.state_dict() for _, _, m, _ in loaded]
    model.load_state_dict({key: torch.stack([s[key].float() for s in states]).mean(0).to(value.dtype)
                           if value.is_floating_point() else value for key, value in states[0].items()})
    training = {
        "average_of": [{"source": f"{folder}/{source}", "sha256": info.sha256, "training": info.training,
                        "metrics": info.metrics} for folder, source, _, info in loaded],
        "items": max(info.training.get("items", 0) for *_, info in loaded),
        "packages": sorted({p for *_, info in loaded for p in info.training.get("packages", [])}),
        "spl_range": first.training.get("spl_range"),  # read by haaqicli.util.levels.trained_spl_range
    }
    return save_model(model, ModelInfo(name=name, arch=first.arch, config=first.config, file=f"{name}.safetensors",
                                       training=training), weights_dir)


def registry_source(text: str) -> tuple[str, str]:
    """REGISTRY:NAME (a weights folder and a model's name there) as a pair; ValueError otherwise (so an
    argparse `type=` reports it as a usage error)."""
    folder, _, name = text.rpartition(":")
    if not folder or not name:
        raise ValueError(f"{text!r} is not REGISTRY:NAME")
    return folder, name


def graft_tensors(base: tuple[str | Path, str], donor: tuple[str | Path, str], prefix: str,
                  out: str | Path) -> dict[str, int]:
    """Write to `out` (a .safetensors warm start for `haaqi train --init`) the tensors of `base` with
    those under `prefix` taken from `donor` ((registry folder, name) pairs, loaded with their sha256
    checked): e.g. the teacher with the distilled model's trained signal corrector, whose inputs (the
    network's logit, the window's descriptors, the audiogram) mean the same for both networks.
    Beside it, `out` + ".json" records both sources' sha256 and the prefix (`training.warm_start.graft`
    of a model trained from it). Returns the counts {"tensors", "grafted"}."""
    # lazy: torch and safetensors only where this path runs (start-up time)
    from safetensors.torch import save

    base_model, base_info = load_model(base[1], weights_dir=base[0])
    donor_model, donor_info = load_model(donor[1], weights_dir=donor[0])
    state = base_model.state_dict()
    grafted = {k: v for k, v in donor_model.state_dict().items() if k.startswith(prefix)}
    if not grafted:
        raise ModelError(f"{donor[0]}/{donor[1]}: no tensor under {prefix!r}")
    mismatched = sorted(k for k, v in grafted.items() if k in state and state[k].shape != v.shape)
    if mismatched:
        raise ModelError(f"{donor[0]}/{donor[1]}: {mismatched[0]} has another shape than in {base[0]}/{base[1]}")
    state.update(grafted)
    blob = save(_unshared(state))
    atomic_write(Path(out), lambda tmp: tmp.write_bytes(blob))
    record = {"base": {"source": f"{base[0]}/{base[1]}", "sha256": base_info.sha256},
              "donor": {"source": f"{donor[0]}/{donor[1]}", "sha256": donor_info.sha256}, "prefix": prefix,
              "sha256": hashlib.sha256(blob).hexdigest()}  # of the file it describes: a stale record is ignored
    atomic_write(Path(f"{out}.json"), lambda tmp: tmp.write_text(json.dumps(record, indent=1) + "\n"))
    return {"tensors": len(state), "grafted": len(grafted)}


def _write_manifest(weights_dir: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    atomic_write(weights_dir / MANIFEST, lambda tmp: tmp.write_text(text), durable=True)


def record_metrics(name: str, key: str, metrics: Mapping[str, Any], weights_dir: str | Path | None = None) -> None:
    """Store measured metrics (e.g. key "validation" from `haaqi evaluate --record`) in the manifest,
    so `haaqi models` shows them; the weights and their sha256 are untouched."""
    wd = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    data = _read_manifest(wd)
    if name not in data["models"]:
        raise ModelError(f"{wd / MANIFEST}: no model named {name!r}")
    data["models"][name].setdefault("metrics", {})[key] = dict(metrics)
    _write_manifest(wd, data)


def calibration_entry(name: str, weights_dir: str | Path | None = None) -> dict[str, Any]:
    """The manifest's record of a model's interval calibration ({"file", "sha256"}), or {}."""
    wd = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    entry = _read_manifest(wd)["models"].get(name, {}).get("calibration", {})
    return dict(entry) if isinstance(entry, dict) else {}


def record_calibration(name: str, file: str, sha256: str, weights_dir: str | Path | None = None) -> None:
    """List a model's calibration file and its sha256 in the manifest (`haaqi calibrate --write`).
    `save_model` rewrites the entry without it: new weights need a new calibration."""
    wd = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    data = _read_manifest(wd)
    if name not in data["models"]:
        raise ModelError(f"{wd / MANIFEST}: no model named {name!r}")
    data["models"][name]["calibration"] = {"file": file, "sha256": sha256}
    _write_manifest(wd, data)


def measure_throughput(model: nn.Module, batch: int = 16, window_s: float = WINDOW_SECONDS,
                       threads: int | None = 2, repeats: int = 3, device: str | torch.device = "cpu"
                       ) -> dict[str, float]:
    """Best-of-`repeats` inference time for a batch of `window_s` windows (fbank included), as
    {"ms_per_window", "realtime_factor"}; the speed targets are for threads=2, batch 16, 6 s @ 24 kHz."""
    # lazy: torch only where this path runs (start-up time)
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        dev = resolve_device(device)
        sr = int(getattr(model, "sample_rate", MODEL_SAMPLE_RATE))
        gen = torch.Generator().manual_seed(0)
        x = (0.1 * torch.randn(batch, round(window_s * sr), generator=gen)).to(dev)
        ag = torch.full((batch, 8), 30.0, device=dev)
        model = model.to(dev).eval()
        best = float("inf")
        with torch.inference_mode():
            model(x, ag)
            for _ in range(max(1, repeats)):
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                t0 = time.perf_counter()
                model(x, ag)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    ms = best / batch * 1e3
    return {"ms_per_window": ms, "realtime_factor": window_s * 1e3 / ms}
