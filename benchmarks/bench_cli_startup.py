"""How fast the command line answers ``--help`` and an argument error, against ``python -c "import torch"``.

    .venv/bin/python benchmarks/bench_cli_startup.py [--repeat 3]

Each command runs in a fresh interpreter (the wall-clock time a user waits), in one run, interleaved so that
a changing machine load affects all of them alike; the median of ``--repeat`` runs is printed, with the
machine's load average. ``--help`` and argument errors import no torch, torchvision, captum or matplotlib
(tests/cli/test_cli.py checks that): they should come back well before ``import torch`` does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

COMMANDS = {
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
    "deconvnet --help": [sys.executable, "-m", "deconvnet", "--help"],
    "deconvnet figures --help": [sys.executable, "-m", "deconvnet", "figures", "--help"],
    "deconvnet project x --layers a (error)": [sys.executable, "-m", "deconvnet", "project", "x", "--layers", "a",
                                               "--out", "a.png"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command (the median is shown)")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeat):
        for name, cmd in COMMANDS.items():
            t = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=False)
            times[name].append(time.perf_counter() - t)
    torch_s = statistics.median(times['python -c "import torch"'])
    print(f"load average {os.getloadavg()[0]:.1f}, {args.repeat} runs each, median wall-clock seconds:")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:<42} {med:6.2f} s  ({med / torch_s:.2f} x import torch)")


if __name__ == "__main__":
    main()
