#!/usr/bin/env bash
# GPU checks and measurements of the mamba_ssm path (docs/benchmarks.md), for a GPU machine that has
# torch + Triton but no package-registry access. Carry gpu-carry/ (ignored by git), prepared with:
#   mkdir -p gpu-carry/wheels
#   cp BUILD_SCRIPT gpu-carry/build-mamba-ssm-sm90.sh   # builds mamba_ssm's CUDA extensions for sm_90
#   cp causal_conv1d-1.7.0-cp312-cp312-linux_x86_64.whl gpu-carry/   # causal_conv1d built for the machine
#   MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE pip download --no-deps --no-binary :all: \
#       --no-build-isolation mamba-ssm==2.3.2.post1 -d gpu-carry
#   pip download --no-deps transformers==5.24.0 -d gpu-carry/wheels
# then run:  bash benchmarks/gpu_native.sh "$OUT" [tests] [agreement] [overhead] [quick] [mamba2] [mamba] [memory2]
#   tests     tests/test_gpu_native.py (the GPU path against the CPU reference)
#   memory2   the Mamba-2-2.7B shape again, peak memory and prefill only
#   agreement benchmarks/gpu_agreement.py (the numbers behind the tests, for docs/benchmarks.md)
#   overhead  benchmarks/reduction_overhead.py on both paper shapes, with per-operator GPU time
#   mamba2 / mamba   python -m utrc.profile on the Mamba-2-2.7B / Mamba-2.8B shape: native dense, the
#             paper schedule at 10/20/30 %, EViT and ToMe at 30 %, searched-style policies at 10/20/30 %
#             (benchmarks/policies), transformers dense for reference; PROFILE_ARGS adds flags (--trace)
# Results are written straight into the output folder (at most 8 files), so a run cut short keeps them;
# every step's time limit is what is left of DEADLINE seconds (default 585) since the script started.
set -uo pipefail
res=${1:?output folder}; shift
what=${*:-tests}
mkdir -p "$res"
left() { local t=$(( ${DEADLINE:-585} - SECONDS )); [ "$t" -lt "$1" ] && echo "$t" || echo "$1"; }
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$res/gpu.txt"
python3 -c "import torch, causal_conv1d" 2>/dev/null || python3 -m pip install -q --no-deps gpu-carry/causal_conv1d-*.whl
bash benchmarks/gpu_mamba_ssm.sh 2>&1 | tail -3
[ -d /tmp/utrc-pylib/transformers ] || python3 -m pip install -q --no-deps --target /tmp/utrc-pylib gpu-carry/wheels/*.whl
export PYTHONPATH=/tmp/utrc-pylib:$PWD
python3 -c "import torch, transformers, mamba_ssm, causal_conv1d; print('torch', torch.__version__, 'transformers', transformers.__version__, 'mamba_ssm', mamba_ssm.__version__, 'causal_conv1d', causal_conv1d.__version__)" | tee -a "$res/gpu.txt"
policies() {  # $1: shape name as in benchmarks/policies; SEARCHED_BUDGETS: which searched-style files
  echo --policy utrc-paper:0.1 --policy utrc-paper:0.2 --policy utrc-paper:0.3 --policy evit:0.3 --policy tome:0.3
  for b in ${SEARCHED_BUDGETS:-0.1 0.2 0.3}; do echo --policy "benchmarks/policies/searched-style-$1-$b.json"; done
}
for w in $what; do
  case $w in
    tests) timeout $(left 400) python3 -m pytest -q -p no:cacheprovider tests/test_gpu_native.py 2>&1 | tee "$res/gpu-tests.txt" | tail -40 ;;
    agreement) timeout $(left 200) python3 benchmarks/gpu_agreement.py --out "$res/agreement-h200.json" | tail -4 ;;
    overhead) for s in mamba2-2.7b mamba-2.8b; do
        timeout $(left 200) python3 benchmarks/reduction_overhead.py --shape "state-spaces/$s" --ops --out "$res/overhead-$s.json" | head -12
      done ;;
    mamba2) timeout $(left 560) python3 -m utrc.profile --shape state-spaces/mamba2-2.7b $(policies mamba2-2.7b) \
        ${PROFILE_ARGS:-} --out "$res/profile-mamba2-2.7b-h200.json" ;;
    mamba) timeout $(left 560) python3 -m utrc.profile --shape state-spaces/mamba-2.8b $(policies mamba-2.8b) \
        ${PROFILE_ARGS:-} --out "$res/profile-mamba-2.8b-h200.json" ;;
    memory2) timeout $(left 300) python3 -m utrc.profile --shape state-spaces/mamba2-2.7b --policy utrc-paper:0.1 \
        --policy utrc-paper:0.2 --policy utrc-paper:0.3 --policy benchmarks/policies/searched-style-mamba2-2.7b-0.3.json \
        --measure memory,prefill --no-transformers-reference --out "$res/memory-mamba2-2.7b-h200.json" ;;
    quick) timeout $(left 300) python3 -m utrc.profile --shape state-spaces/mamba2-2.7b --policy utrc-paper:0.3 \
        --policy benchmarks/policies/searched-style-mamba2-2.7b-0.3.json --measure prefill,generate --repeats 3 \
        --no-transformers-reference --trace --out "$res/quick-mamba2-2.7b.json" ;;
    *) echo "unknown step $w" >&2 ;;
  esac
done
