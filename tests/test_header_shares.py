"""Under torchrun each rank opens only its share of the image headers; every rank leaves out the same files."""

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from test_distributed import run

SCRIPT = r"""
import json, sys, warnings
import PIL.Image
import torch.distributed as dist

opens = []
_open = PIL.Image.open
def counted(fp, *a, **k):
    opens.append(str(fp))
    return _open(fp, *a, **k)
PIL.Image.open = counted

import deconvnet as dn
from deconvnet.data import ImageFolder

if len(sys.argv) > 2:
    dist.init_process_group("gloo")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ds = ImageFolder(sys.argv[1], preprocessing=dn.load_vgg("vgg11", "random").preprocessing)
rank = dist.get_rank() if dist.is_initialized() else 0
out = {"opens": len(opens), "paths": [str(p) for p in ds.paths], "skipped": {str(k): v for k, v in ds.skipped.items()},
       "warned": [str(w.message) for w in caught]}
print("RESULT" + json.dumps(out))
if dist.is_initialized():
    dist.destroy_process_group()
"""


def test_two_ranks_open_the_headers_once_in_all(tmp_path):
    root = tmp_path / "images"
    g = np.random.default_rng(3)
    for i in range(40):
        (root / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(g.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / "ab"[i % 2] / f"img{i:02d}.png")
    (root / "a" / "broken.jpg").write_bytes(b"not an image")  # refused by its header, on whichever rank checks it
    script = tmp_path / "count.py"
    script.write_text(SCRIPT)

    def results(proc):
        assert proc.returncode == 0, proc.stderr[-2000:]
        return [json.loads(line[6:]) for line in proc.stdout.splitlines() if line.startswith("RESULT")]

    (one,) = results(run([str(script), str(root)], None, tmp_path))
    two = results(run([str(script), str(root), "dist"], 2, tmp_path))
    assert len(two) == 2 and one["opens"] == 41
    assert sum(r["opens"] for r in two) <= 1.1 * one["opens"]  # each rank its share (20 and 21 here)
    for r in two:  # the same files kept and left out, and the same warning, on every rank
        assert r["paths"] == one["paths"] and len(r["paths"]) == 40
        assert r["skipped"] == one["skipped"] and list(r["skipped"]) == [str(root / "a" / "broken.jpg")]
        assert r["warned"] == one["warned"]
