#!/usr/bin/env python3
"""Write a warm start for `haaqi train --init`: one model's tensors with those under a prefix taken
from another (haaqicli.models.registry.graft_tensors), e.g. the teacher with the distilled model's
trained signal corrector:

    PYTHONPATH=src .venv/bin/python scripts/graft-tensors.py --base weights:teacher \\
        --donor weights:distilled --prefix head.corrector. --out data/exp/teacher-init.safetensors

The output is a plain .safetensors file (an initialisation, not a registered model); `haaqi train
--init FILE` records its sha256 as the warm start.
"""

from __future__ import annotations

import argparse
import sys

from haaqicli.models.registry import graft_tensors, registry_source
from haaqicli.util.errors import HaaqiError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, type=registry_source, help="REGISTRY:NAME whose tensors are kept")
    parser.add_argument("--donor", required=True, type=registry_source, help="REGISTRY:NAME whose tensors under --prefix replace them")
    parser.add_argument("--prefix", required=True, help="tensor-name prefix taken from the donor")
    parser.add_argument("--out", required=True, help=".safetensors file written")
    args = parser.parse_args(argv)
    try:
        counts = graft_tensors(args.base, args.donor, args.prefix, args.out)
    except HaaqiError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"{args.out}: {counts['tensors']} tensors, {counts['grafted']} of them from {':'.join(args.donor)} ({args.prefix}*)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
