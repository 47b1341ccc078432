#!/usr/bin/env bash
# tests/oracle/install.sh — installs the oracle's Python packages (pinned) with pip.
# torch is the CUDA build from PyPI; its GPU runtime libraries are not needed to run on the CPU, so it is
# installed without dependencies plus the few libraries its import needs beyond the CUDA toolkit on this kind
# of machine. If that import still fails (another machine), the full dependency set is installed instead.
set -euo pipefail
PIP="python3 -m pip install -q --disable-pip-version-check"
$PIP numpy==2.4.6 ml_dtypes==0.6.0
if ! python3 -c "import torch" 2>/dev/null; then
    $PIP filelock typing-extensions sympy networkx jinja2 fsspec
    $PIP --no-deps torch==2.15.0 nvidia-cufile==1.20.0.107 nvidia-cusparselt-cu13==0.10.0 \
        nvidia-nvshmem-cu13==3.8.0 nvidia-nccl-cu13==2.32.3
    python3 -c "import torch" 2>/dev/null || $PIP torch==2.15.0
fi
# transformers: make_routing.py runs its real MoE router modules and make_layer.py its real MoE blocks (CPU only),
# pinned with its direct dependencies.
# It does not depend on torch, so pip leaves the torch install above alone.
$PIP transformers==5.23.0 huggingface_hub==2.4.0 tokenizers==0.23.3 safetensors==0.8.0 regex==2026.5.9 \
    PyYAML==6.0.3 packaging==26.3 tqdm==4.70.1 typer==0.29.2
python3 -c "import numpy, ml_dtypes, torch; print('oracle packages: numpy', numpy.__version__, 'ml_dtypes', ml_dtypes.__version__, 'torch', torch.__version__)"
python3 -c "import transformers; print('oracle packages: transformers', transformers.__version__)"
