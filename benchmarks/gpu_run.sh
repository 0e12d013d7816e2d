#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md, for the lent H100 machine (device tool), which has
# torch + Triton but no registry access. Carry gpu-carry/ (ignored by git), prepared here with:
#   mkdir -p gpu-carry/wheels && cp ../shared/tools/build-mamba-ssm-sm90.sh gpu-carry/
#   MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE pip download --no-deps --no-binary :all: \
#       --no-build-isolation mamba-ssm==2.3.2.post1 -d gpu-carry
#   pip download --no-deps transformers==5.24.0 -d gpu-carry/wheels
# then run:  bash benchmarks/gpu_run.sh "$OUT" [consistency] [mamba2] [mamba]
# mamba_ssm is built on the first call (benchmarks/gpu_mamba_ssm.sh; pass WHEEL_OUT=$OUT/w to get
# the wheel back in parts for later calls). Everything else comes back as $OUT/gpu-run.tar.gz:
# gpu.txt, consistency.json, profile-*.json and tables.md (the tables of docs/benchmarks.md).
set -uo pipefail
out=${1:?output folder}; shift
what=${*:-consistency mamba2 mamba}
res=/tmp/utrc-gpu-run; mkdir -p "$res"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$res/gpu.txt"
bash benchmarks/gpu_mamba_ssm.sh ${WHEEL_OUT:-} 2>&1 | tail -3
python3 -m pip install -q --no-deps --upgrade --target /tmp/utrc-pylib gpu-carry/wheels/*.whl
export PYTHONPATH=/tmp/utrc-pylib:$PWD PYTHONUNBUFFERED=1
policies=${POLICIES:-"--policy paper:0.1 --policy paper:0.2 --policy paper:0.3 --policy evit:0.3 --policy tome:0.3"}
for w in $what; do
  case $w in
    consistency) timeout ${CONSISTENCY_S:-300} python3 benchmarks/gpu_consistency.py --seq-len ${CONSISTENCY_LEN:-300} --out "$res/consistency.json" ;;
    mamba2) timeout ${PROFILE_S:-600} python3 -m utrc.profile --shape state-spaces/mamba2-2.7b $policies --repeats ${REPEATS:-5} ${PROFILE_ARGS:-} --out "$res/profile-mamba2-2.7b.json" ;;
    mamba) timeout ${PROFILE_S:-600} python3 -m utrc.profile --shape state-spaces/mamba-2.8b $policies --repeats ${REPEATS:-5} ${PROFILE_ARGS:-} --out "$res/profile-mamba-2.8b.json" ;;
  esac
done
# the markdown tables of docs/benchmarks.md, from the results just written
if compgen -G "$res/profile-*.json" >/dev/null; then
  python3 benchmarks/profile_table.py "$res"/profile-*.json | tee "$res/tables.md"
fi
tar czf "$out/gpu-run.tar.gz" -C "$res" .
