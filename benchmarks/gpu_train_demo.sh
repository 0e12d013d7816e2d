#!/usr/bin/env bash
# Train the demo models on a GPU machine (an H100, no registry access): several seeded training runs at
# once, one process each (the models are tiny and leave the GPU mostly idle, so runs overlap).
# Carry gpu-carry/ (transformers wheel; see benchmarks/gpu_native.sh). With MAMBA_SSM=1 it first makes
# mamba_ssm importable (benchmarks/gpu_mamba_ssm.sh), and transformers then trains through its
# kernels (selective scan, SSD chunk scan): Mamba-1 needs them (its PyTorch scan took 6.2 s a
# step); Mamba-2 also trains on transformers' PyTorch path (71 ms a 64-episode step).
#   bash benchmarks/gpu_train_demo.sh "$OUT" MINUTES NAME:ARGS [NAME:ARGS ...]
# e.g. NAME:ARGS = "mamba2:--arch mamba2 --batch-size 64". Everything comes back as one archive,
# $OUT/runs.tar.gz (NAME/{model files,train.log}, NAME.stdout): at most 8 files come back from the GPU machine.
# Each run is stopped 45 s past MINUTES; it keeps the weights of its last dev evaluation.
set -uo pipefail
out=${1:?output folder}; minutes=${2:?minutes per run}; shift 2
runs=/tmp/utrc-train; mkdir -p "$runs"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$runs/gpu.txt"
python3 -m pip install -q --no-deps --upgrade --target /tmp/utrc-pylib gpu-carry/wheels/*.whl
if [ "${MAMBA_SSM:-0}" = 1 ]; then bash benchmarks/gpu_mamba_ssm.sh; fi
export PYTHONPATH=/tmp/utrc-pylib:$PWD
limit=$(python3 -c "print(int($minutes * 60 + 45))")
pids=()
for run in "$@"; do
  name=${run%%:*}; args=${run#*:}
  # shellcheck disable=SC2086
  timeout "$limit" python3 -m demo.train --out "$runs/$name" --minutes "$minutes" --workers 2 $args \
    >"$runs/$name.stdout" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
nvidia-smi --query-gpu=memory.used --format=csv,noheader >>"$runs/gpu.txt"
tar czf "$out/runs.tar.gz" -C "$runs" .
for run in "$@"; do name=${run%%:*}; echo "== $name"; grep -E "ms/step|dev|trained|Error" "$runs/$name/train.log" "$runs/$name.stdout" | tail -8; done
