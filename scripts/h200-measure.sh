#!/usr/bin/env bash
# The H200 measurements issue #8 still needs, as device calls of under 10 minutes each.
# On this machine first: `bun install && bash ../shared/gpu/device-bundle.sh` (packs .device/)
# and `mkdir -p .tmp && cp ../shared/bench/peft_bench.py .tmp/`; then with the device tool,
# carry [".device", ".tmp"] and run
#   source .device/setup.sh >/dev/null 2>&1 && bash scripts/h200-measure.sh kernels          (~5 min)
#   source .device/setup.sh >/dev/null 2>&1 && bash scripts/h200-measure.sh train MODEL      (~5 min each:
#       smollm2-135m, qwen2.5-0.5b, llama3.2-1b; ours and HF PEFT in the same call)
#   source .device/setup.sh >/dev/null 2>&1 && bash scripts/h200-measure.sh serve            (~3 min)
# Results land in $OUT (the device tool fetches them). Dawn prints shader warnings on stdout,
# so JSON lines are filtered with grep '^{'.
#
# kernels: the tensor-core tests (incl. the staged variants with a 64-wide K slice and double
#   buffering, never run on the H200 yet), the GEMM sweep with those variants, and the same
#   sweep with Dawn's robustness checks off (TUNELOOM_DAWN_ENABLE=disable_robustness) to see
#   what bounds clamping costs.
# train MODEL: ours (every token labelled, and answer-only labels on 30% of each row, where our
#   head runs on target rows only) and HF PEFT in the same call (ratio = ours / HF).
# serve: batch-1 decode and HTTP serving (1 and 16 streams).
set -u
OUT=${OUT:-/tmp/h200-measure}
mkdir -p "$OUT"
json() { grep '^{' || true; }

case "${1:-}" in
  kernels)
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1
    git rev-parse --short HEAD >> "$OUT/gpu.txt" 2>/dev/null
    timeout 200 bun test kernels 2>&1 | grep -E '^\(fail\)|^ *[0-9]+ (pass|fail|skip)|^error' > "$OUT/kernel-tests.txt"
    CONFIGS=4x4_2x2s,4x4_2x2sd,4x4_2x2sk64,4x4_2x1s,4x4_2x1sd,2x4_2x2s,2x4_2x2sd,4x4_2x4s,4x4_4x2s
    timeout 200 bun apps/cli/src/bench/gemm.ts --configs "$CONFIGS" 2>/dev/null | json > "$OUT/gemm.jsonl"
    TUNELOOM_DAWN_ENABLE=disable_robustness timeout 90 bun apps/cli/src/bench/gemm.ts --quick --configs 4x4_2x2s,4x4_2x2sd 2>/dev/null | json > "$OUT/gemm-no-robustness.jsonl"
    ;;
  train)
    m=${2:?usage: h200-measure.sh train smollm2-135m|qwen2.5-0.5b|llama3.2-1b}
    timeout 150 bun run bench -- --train --model "$m" --batch 8 --seq 512 --rank 16 --steps 8 --profile 2>/dev/null | json >> "$OUT/train-$m.jsonl"
    timeout 100 bun run bench -- --train --model "$m" --batch 8 --seq 512 --rank 16 --steps 8 --target-fraction 0.3 2>/dev/null | json >> "$OUT/train-$m.jsonl"
    timeout 200 python3 .tmp/peft_bench.py --models "$m" --gc 1 --decode 0 --steps 10 > "$OUT/peft-$m.txt" 2>&1
    ;;
  serve)
    timeout 60 bun run bench -- --decode --model smollm2-135m 2>/dev/null | json > "$OUT/decode.jsonl"
    timeout 60 bun run bench -- --decode --model qwen2.5-0.5b 2>/dev/null | json >> "$OUT/decode.jsonl"
    timeout 90 bun run bench -- --serve --model smollm2-135m --streams 1,16 --tokens 128 --prompt-tokens 64 --weight-dtype f16 2>/dev/null | json > "$OUT/serve.jsonl"
    ;;
  *)
    echo "usage: bash scripts/h200-measure.sh kernels | train MODEL | serve" >&2
    exit 2
    ;;
esac
ls -l "$OUT"
