"""The study's tables: written as CSV and JSON, or formatted as aligned text."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

from ..io import atomic_path


def write_table(rows: Sequence[dict], path: str | Path) -> list[Path]:
    """Write table rows as ``path`` with suffix .csv and .json (atomically); return both paths."""

    path = Path(path)
    out = []
    clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]
    for suffix in (".csv", ".json"):
        target = path.with_suffix(suffix)
        with atomic_path(target) as tmp, open(tmp, "w", newline="") as f:
            if suffix == ".json":
                json.dump(clean, f, indent=1)
            else:
                keys = list(dict.fromkeys(k for r in clean for k in r))
                writer = csv.DictWriter(f, fieldnames=keys)
                writer.writeheader()
                writer.writerows(clean)
        out.append(target)
    return out


def format_table(rows: Sequence[dict]) -> str:
    """The table as aligned text (for notebooks and logs)."""
    lines = [f"{'signal':<18} {'method':<20} {'MSE':>10} {'PSNR dB':>8} {'corr':>7} {'maxima kept':>11}"]
    for r in rows:
        ps = f"{r['psnr_db']:.2f}" if r.get("psnr_db") is not None else "-"
        lines.append(
            f"{r['signal'][:18]:<18} {r['method']:<20} {r['mse']:>10.4g} {ps:>8} {r['correlation']:>7.4f} "
            f"{r['maxima_kept']:>11.3f}"
        )
    return "\n".join(lines)
