"""The ``haaqi`` command: a thin Click shell over the library.

Subcommands are imported lazily, so ``haaqi profiles`` does not pay for importing torch.
"""

from __future__ import annotations

import importlib

import click

from haaqicli import __version__

# command name -> "module:attribute" (module relative to haaqicli.cli)
COMMANDS: dict[str, str] = {
    "score": "score:score",
    "profiles": "score:profiles",
    "models": "score:models",
    "reference": "reference:reference",
    "dataset": "dataset:dataset",
    "train": "training:train",
    "distill": "training:distill",
    "evaluate": "training:evaluate",
    "bench": "bench:bench",
    "check": "gate:check",
    "sweep": "gate:sweep",
    "compare": "gate:compare",
}


class LazyGroup(click.Group):
    """Click group that imports a subcommand's module only when it is used (see Click docs)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        module = importlib.import_module(f"haaqicli.cli.{module_name}")
        return getattr(module, attribute)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="haaqi")
def main() -> None:
    """Predict HAAQI music quality for listeners with hearing loss."""
