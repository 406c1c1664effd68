"""`python -m haaqicli ...`: the `haaqi` command where its console script is not on PATH."""

from haaqicli.cli import entry

if __name__ == "__main__":  # guarded: worker processes started by spawn import this module again
    entry()
