#!/usr/bin/env bash
# The 3D network's triton path on one GPU, as one prepared script for a machine without a package
# registry (docs/benchmarks.md, "The 3D network through Triton on a GPU"):
#   1. installs spconv-triton from the wheel kept in .wheels/ (git-ignored; fetch it where a registry
#      is reachable with `pip download --no-deps --dest .wheels "spconv-triton>=1.0"`),
#   2. runs the tests that need CUDA: the backend selection, the triton path against the float64
#      reference, the torch path on CUDA, and a short pre-training on pretrain.backend3d=triton,
#   3. times the torch and triton paths in the same run: the 3D network alone, then a training step.
# Run from the repository root with a CUDA build of PyTorch in .venv: bash benchmarks/gpu_triton.sh
set -euo pipefail

python=${PYTHON:-.venv/bin/python}
"$python" -m pip install --no-index --no-deps .wheels/spconv_triton-*.whl
"$python" -c "import torch, triton, spconv_triton
assert torch.cuda.is_available(), 'no CUDA device'
print(torch.cuda.get_device_name(0), 'torch', torch.__version__, 'triton', triton.__version__)"
"$python" -m pytest -q tests/models/test_sparse_backends.py tests/models/test_sparse_conv_torch.py \
    tests/tasks/test_pretrain_config.py -k "cuda or triton or backend" --basetemp=/tmp/pt-gpu-triton
PYTHONPATH=. "$python" benchmarks/sparse_unet.py --device cuda --batch 2 --voxels 35000 \
    --backend torch triton --repeat 5
PYTHONPATH=. "$python" benchmarks/pretrain_step.py --device cuda --backbone Res50UNet --batch 8 \
    --mode view view+geo+depth --backend3d torch triton --repeat 5
