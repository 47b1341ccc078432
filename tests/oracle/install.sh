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
python3 -c "import numpy, ml_dtypes, torch; print('oracle packages: numpy', numpy.__version__, 'ml_dtypes', ml_dtypes.__version__, 'torch', torch.__version__)"
