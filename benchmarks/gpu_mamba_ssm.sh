#!/usr/bin/env bash
# Make mamba_ssm importable on a GPU machine without registry access (benchmarks/gpu_native.sh).
#   bash benchmarks/gpu_mamba_ssm.sh [WHEEL_OUT]
# 1. If it is importable already (a warm machine), nothing to do.
# 2. If gpu-carry/mamba-ssm-wheel/ holds the parts of a wheel built by an earlier call, join and
#    install them (seconds).
# 3. Otherwise build it from the carried sdist with gpu-carry/build-mamba-ssm-sm90.sh
#    (about 3.5 minutes) and, if WHEEL_OUT is given, write the wheel there
#    in 15 MB parts: a file that comes back from the GPU machine may have at most 16 MiB. Copy the parts that come back
#    into gpu-carry/mamba-ssm-wheel/ for the next calls.
set -euo pipefail
wheel_out=${1:-}
if python3 -c "import mamba_ssm, selective_scan_cuda" 2>/dev/null; then
  echo "mamba_ssm: already installed"; exit 0
fi
parts=gpu-carry/mamba-ssm-wheel
if compgen -G "$parts/*.part-*" >/dev/null; then
  name=$(ls "$parts"/*.part-aa); name=$(basename "${name%.part-aa}")
  mkdir -p /tmp/mamba-ssm-wheel
  cat "$parts/$name".part-* >"/tmp/mamba-ssm-wheel/$name"
  python3 -m pip install -q --no-deps --no-index "/tmp/mamba-ssm-wheel/$name"
  python3 -c "import mamba_ssm, selective_scan_cuda; print('mamba_ssm', mamba_ssm.__version__, 'installed from carried wheel')"
  exit 0
fi
export TMPDIR=${TMPDIR:-/tmp}
bash gpu-carry/build-mamba-ssm-sm90.sh gpu-carry/mamba_ssm-*.tar.gz 2>&1 | tail -3
if [ -n "$wheel_out" ]; then
  whl=$(ls -t "$TMPDIR"/tmp.*/wheel/mamba_ssm-*.whl | head -1)
  mkdir -p "$wheel_out"
  split -b 15M "$whl" "$wheel_out/$(basename "$whl").part-"
  ls -l "$wheel_out"
fi
