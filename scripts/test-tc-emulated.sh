#!/usr/bin/env bash
# The tensor-core paths' tests on a CPU driver: subgroup matrices emulated in plain WGSL
# (kernels/src/subgroup-matrix-emulation.ts, TUNELOOM_EMULATE_TC=1), so the GEMM kernels, the
# attention passes, LoRA's tensor-core products and a whole LoRA training step on them are compared
# with float64 (and with the f32 step) here too, not first on a GPU call. Each emulated pipeline
# takes seconds to build in lavapipe's LLVM, so the GEMM and attention tests run a smaller set of
# forms in this mode, and the two groups below run side by side. Lavapipe's 32 KiB of workgroup
# memory leave out the staged attention tiles and shrink the 64-deep GEMM slices (docs/kernels.md).
set -uo pipefail
cd "$(dirname "$0")/.."
export TUNELOOM_EMULATE_TC=1
logs=$(mktemp -d)
bun test --timeout 900000 -t 'tensor-core|tensor cores' kernels/test/matmul-subgroup.test.ts > "$logs/gemm.log" 2>&1 &
gemm=$!
{ bun test --timeout 900000 -t 'tensor-core|tensor cores' kernels/test/attention.test.ts packages/model/test/lora-dropout.test.ts && bun test --timeout 900000 packages/trainer/test/gpu-step.test.ts; } > "$logs/lora.log" 2>&1 &
lora=$!
status=0
wait "$gemm" || status=1
wait "$lora" || status=1
cat "$logs/gemm.log" "$logs/lora.log"
for log in "$logs/gemm.log" "$logs/lora.log"; do
  # no test passing means no tensor-core path here (no shader-f16): a failure, not a pass
  if ! grep -q '^(pass)' "$log"; then echo "test:tc: no tensor-core test ran in $(basename "$log" .log) (does the adapter have shader-f16?)" >&2; status=1; fi
done
exit "$status"
