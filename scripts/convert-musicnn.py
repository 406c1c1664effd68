#!/usr/bin/env python3
"""Convert a musicnn checkpoint (TensorFlow 1) to safetensors for haaqicli.models.musicnn.

    pip download musicnn==0.1.0 --no-deps -d data/musicnn          # (make musicnn does both steps)
    PYTHONPATH=src .venv/bin/python scripts/convert-musicnn.py data/musicnn/musicnn-0.1.0-py3-none-any.whl \\
        --model MSD_musicnn --out data/musicnn/MSD_musicnn.safetensors

SOURCE is the musicnn wheel, a folder holding the extracted `musicnn/` package (or the checkpoint
folder itself), or a checkpoint prefix. Nothing is downloaded and TensorFlow is not needed: the checkpoint is read by
haaqicli.models.tf_checkpoint (each tensor's crc32c checked), mapped onto the torch port, loaded into
it strictly, and written with its config in the safetensors metadata. The output is deterministic:
its sha256 is pinned in haaqicli.models.musicnn.CONVERTED_SHA256.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import zipfile
from pathlib import Path

from haaqicli.models.musicnn import MusiCNN, config_from_tf, save_converted, state_from_tf
from haaqicli.models.tf_checkpoint import read_index, read_tf_checkpoint
from haaqicli.util.errors import HaaqiError
from haaqicli.util.hashing import content_hash

MODELS = ("MSD_musicnn", "MTT_musicnn")
# PyPI's musicnn-0.1.0-py3-none-any.whl
WHEEL_SHA256 = "f38a4890c648c1ddbb141c5d96d2b0a8cfcd36746002d896989f7b88beb65cfa"


def checkpoint_prefix(source: Path, model: str, scratch: Path) -> Path:
    """The checkpoint of `model`: the folder holding its `.index` and `.data-00000-of-00001` (extracted
    from a wheel), or SOURCE itself when it is a checkpoint prefix (SOURCE.index exists)."""
    if Path(f"{source}.index").is_file():
        return source
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            for name in (".index", ".data-00000-of-00001"):
                wheel.extract(f"musicnn/{model}/{name}", scratch)
        return scratch / "musicnn" / model
    for folder in (source / "musicnn" / model, source / model, source):
        if (folder / ".index").is_file():
            return folder
    raise HaaqiError(f"{source}: no {model} checkpoint (expected musicnn/{model}/.index)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("source", type=Path, help="musicnn wheel or extracted folder")
    parser.add_argument("--model", choices=MODELS, default="MSD_musicnn")
    parser.add_argument("--out", type=Path, default=None, help="[default: data/musicnn/MODEL.safetensors]")
    args = parser.parse_args(argv)
    out = args.out or Path("data/musicnn") / f"{args.model}.safetensors"
    try:
        if not args.source.exists() and not Path(f"{args.source}.index").is_file():
            raise HaaqiError(f"{args.source}: no such file or folder")
        if args.source.suffix == ".whl":
            sha = content_hash(args.source)
            note = "PyPI's" if sha == WHEEL_SHA256 else "NOT PyPI's musicnn 0.1.0 wheel"
            print(f"{args.source}: sha256 {sha} ({note})")
        with tempfile.TemporaryDirectory() as scratch:
            folder = checkpoint_prefix(args.source, args.model, Path(scratch))
            # The model's own variables: Adam slots and beta powers are training state.
            names = [n for n in read_index(folder) if "Adam" not in n and not n.startswith("beta")]
            tensors = read_tf_checkpoint(folder, names)
        cfg = config_from_tf(tensors)
        state = state_from_tf(tensors)
        MusiCNN(cfg).load_state_dict(state, strict=True)  # every tensor has its place and shape
        out.parent.mkdir(parents=True, exist_ok=True)
        sha = save_converted(state, cfg, out, source=f"musicnn 0.1.0 {args.model} (ISC licence, MTG-UPF 2019)")
    except (HaaqiError, OSError, zipfile.BadZipFile, KeyError) as error:
        print(f"convert-musicnn: {error}", file=sys.stderr)
        return 2
    params = sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked"))
    print(f"{out}: {params:,} parameters, {out.stat().st_size / 1e6:.2f} MB, sha256 {sha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
