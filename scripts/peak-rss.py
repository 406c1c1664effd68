"""Peak memory of a command with every process it starts: the largest sum of their resident sets,
polled every 20 ms from /proc (Linux). `/usr/bin/time -f %M` reports the largest single process only,
which misses `haaqi score`'s decoding process. From the repository root:
    .venv/bin/python scripts/peak-rss.py .venv/bin/haaqi score data/bench/three --profile mild -q --out o.csv
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def descendants(root: int) -> list[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # gone meanwhile
                continue
            children.setdefault(parent, []).append(int(name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def resident_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    process = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = peak_main = 0
    while process.poll() is None:
        peak = max(peak, sum(resident_kb(pid) for pid in descendants(process.pid)))
        peak_main = max(peak_main, resident_kb(process.pid))
        time.sleep(0.02)
    print(f"peak summed RSS {peak / 1024:.0f} MB (the command's own process {peak_main / 1024:.0f} MB), "
          f"exit status {process.returncode}")


if __name__ == "__main__":
    main()
