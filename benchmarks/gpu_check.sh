#!/usr/bin/env bash
# The device check, prepared to run in one call on a machine with a GPU (the development machine has none):
# the CUDA tests, then the projection and scan benchmarks on CUDA, the graph engine among them.
#   bash benchmarks/gpu_check.sh            # after ./run.sh venv (or with PY=python3 where torch is installed)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export DECONVNET_OFFLINE=1 MPLBACKEND=Agg PYTHONUNBUFFERED=1
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total --format=csv || true
# the tests that run only where a GPU is, marked `cuda` (they are skipped, with their reason, elsewhere)
"$PY" -m pytest -q -rs -m cuda
# speed on the GPU, measured side by side with Captum (chain and graph sections) and with a plain forward
"$PY" benchmarks/bench_project.py --device cuda --sections chain,graph
"$PY" benchmarks/bench_scan.py --device cuda --n 256
