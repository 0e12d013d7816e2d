#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md, for the lent H100 machine (device tool), which has
# torch + Triton but no registry access. Carry gpu-carry/ (ignored by git), prepared here with:
#   mkdir -p gpu-carry/wheels && cp ../shared/tools/build-mamba-ssm-sm90.sh gpu-carry/
#   MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE pip download --no-deps --no-binary :all: \
#       --no-build-isolation mamba-ssm==2.3.2.post1 -d gpu-carry
#   pip download --no-deps transformers==5.24.0 -d gpu-carry/wheels
# then run:  bash benchmarks/gpu_run.sh "$OUT" [consistency] [mamba2] [mamba]
set -euo pipefail
out=${1:?output folder}; shift
what=${*:-consistency mamba2 mamba}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import mamba_ssm" 2>/dev/null || bash gpu-carry/build-mamba-ssm-sm90.sh gpu-carry/mamba_ssm-*.tar.gz 2>&1 | tail -3
python3 -m pip install -q --no-deps --target /tmp/utrc-pylib gpu-carry/wheels/*.whl
export PYTHONPATH=/tmp/utrc-pylib:$PWD
policies=${POLICIES:-"--policy paper:0.1 --policy paper:0.2 --policy paper:0.3 --policy evit:0.3 --policy tome:0.3"}
for w in $what; do
  case $w in
    consistency) timeout ${CONSISTENCY_S:-300} python3 benchmarks/gpu_consistency.py --seq-len 256 --out "$out/consistency.json" ;;
    mamba2) timeout ${PROFILE_S:-600} python3 -m utrc.profile --shape state-spaces/mamba2-2.7b $policies --repeats ${REPEATS:-5} --out "$out/profile-mamba2-2.7b.json" ;;
    mamba) timeout ${PROFILE_S:-600} python3 -m utrc.profile --shape state-spaces/mamba-2.8b $policies --repeats ${REPEATS:-5} --out "$out/profile-mamba-2.8b.json" ;;
  esac
done
