#!/usr/bin/env bash
# GPU smoke test and benchmark of the `cuda` build, run on a machine with an NVIDIA GPU.
#
# It takes binaries built elsewhere (the GPU machine may reach no registry):
#   CUDARC_CUDA_VERSION=13000 cargo build --release -p site-agent --features cuda \
#       --bin site-agent --bench train_step
# and a folder holding `site-agent` and `train_step` (GPU_BIN, default gpu-bin/).
#
# 1. learns: synthesises the EMIDEC-like center, trains the CPU-size model on the GPU and
#    scores it on its test split (whole-LV Dice), timed;
# 2. speed: the paper-size U-Net (6 levels to 1024 maps), 256x256, batch 16, a few hundred
#    steps, twice (cold, then with CubeCL's kernel caches warm): slices/s and peak GPU
#    memory, then the same network in PyTorch CUDA
#    (tools/pytorch_unet_bench.py) on the same GPU when python3 has torch.
# Results go to stdout and to $OUT (or ./gpu-out).
set -uo pipefail

BIN=${GPU_BIN:-gpu-bin}
RESULTS=${OUT:-gpu-out}
STEPS=${STEPS:-200}
EPOCHS=${EPOCHS:-20}
mkdir -p "$RESULTS"
work=$(mktemp -d)

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

# NVRTC compiles the kernels at run time: find a libnvrtc (CUDA toolkit or a pip wheel).
nvrtc=$( (find /usr/local/cuda*/lib64 /usr/local/cuda*/targets/*/lib -name 'libnvrtc.so*' 2>/dev/null
    find / -xdev -name 'libnvrtc.so*' 2>/dev/null) | head -n1)
if [[ -z $nvrtc ]]; then
    echo "no libnvrtc.so found: install the CUDA toolkit or pip's nvidia-cuda-nvrtc" >&2
    exit 1
fi
export LD_LIBRARY_PATH="$(dirname "$nvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "libnvrtc: $nvrtc"

# Peak GPU memory, sampled outside the process (burn has no allocator statistics to ask).
peak_gpu_mib() {
    local log=$1
    shift
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$log" &
    local sampler=$!
    "$@"
    local rc=$?
    kill "$sampler" 2>/dev/null
    wait "$sampler" 2>/dev/null
    echo "peak_gpu_mib=$(sort -n "$log" | tail -n1) (device total, sampled every 100 ms)"
    return $rc
}

export RUST_BACKTRACE=1
learns() {
echo "== learns ($(date +%T)): CPU-size model on the GPU, EMIDEC-like center"
"$BIN/site-agent" synth --out "$work/data" --centers emidec --subjects 20 --no-montage >/dev/null || return 1
start=$(date +%s.%N)
timeout 150 "$BIN/site-agent" train --config "$work/data/emidec/site.toml" --model cpu --device cuda \
    --epochs "$EPOCHS" --out "$work/emidec.safetensors" --json >"$RESULTS/train.json" || return 1
end=$(date +%s.%N)
python3 - "$RESULTS/train.json" <<'EOF'
import json, sys
o = json.load(open(sys.argv[1]))
last = o["epochs"][-1]
print(f"trained {len(o['epochs'])} epochs, best val Dice {o['best_val_dice']:.3f} at epoch {o['best_epoch'] + 1}, "
      f"{last['slices_per_s']:.0f} slices/s in the last epoch")
EOF
echo "train wall time: $(python3 -c "print(f'{$end - $start:.1f} s')")"
"$BIN/site-agent" evaluate --config "$work/data/emidec/site.toml" --weights "$work/emidec.safetensors" \
    --device cuda --csv "$RESULTS/emidec-test.csv"
}

echo "== speed ($(date +%T)): paper-size U-Net, 256x256, batch 16, $STEPS steps"
# CubeCL compiles and autotunes every kernel shape on first use and caches the results on
# disk: the second run shows the steady state (on an H200 the first step alone took > 200 s).
for run in 1 2; do
    echo "burn run $run ($(date +%T))"
    peak_gpu_mib "$work/mem-burn.log" timeout "${BURN_TIMEOUT:-200}" "$BIN/train_step" paper 16 256 "$STEPS" cuda
done
if python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
    peak_gpu_mib "$work/mem-torch.log" python3 tools/pytorch_unet_bench.py --levels 6 --base 32 \
        --max 1024 --ds 3 --size 256 --batch 16 --steps "$STEPS" --warmup 10 --device cuda
else
    echo "python3 has no CUDA torch: PyTorch comparison skipped"
fi

learns || echo "learns: FAILED"

echo "== speed: CPU-size U-Net on the GPU, 128x128, batch 8"
peak_gpu_mib "$work/mem-burn-cpu.log" timeout 90 "$BIN/train_step" cpu 8 128 "$STEPS" cuda
if python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
    peak_gpu_mib "$work/mem-torch-cpu.log" python3 tools/pytorch_unet_bench.py --levels 5 --base 16 \
        --max 256 --ds 2 --size 128 --batch 8 --steps "$STEPS" --warmup 10 --device cuda
fi
rm -rf "$work"
