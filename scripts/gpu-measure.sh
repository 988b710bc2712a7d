#!/usr/bin/env bash
# The GPU measurements behind docs/benchmarks.md, each as JSON lines under $OUT, for device calls
# of under 10 minutes. On the CPU machine first: `bun install && bash ../shared/gpu/device-bundle.sh`
# (packs .device/) and `mkdir -p .tmp && cp ../shared/bench/peft_bench.py .tmp/`; then, with the
# device tool, carry [".device", ".tmp"] and run for example
#   source .device/setup.sh >/dev/null 2>&1 && bash scripts/gpu-measure.sh train smollm2-135m qwen2.5-0.5b llama3.2-1b llama3.2-3b
#   source .device/setup.sh >/dev/null 2>&1 && bash scripts/gpu-measure.sh load llama3.1-8b && bash scripts/gpu-measure.sh decode llama3.2-1b
# and back here: `bun apps/cli/src/bench/report.ts DIR...` rewrites the generated tables of
# docs/benchmarks.md from the JSON files (no hand copying).
#
# kernels          tensor-core tests, the GEMM sweep over tile configurations (gemm.jsonl)
# train MODEL...   per model, in this order in one call: ours with every token labelled, ours with
#                  answer-only labels on 30% of each row, HF PEFT (train.jsonl; ratio = ours / HF)
# load MODEL       HF saves a random bf16 model of that shape (transformers' own sharding), HF
#                  from_pretrained is timed, then ours loads the same directory, trains on it and
#                  decodes from it; HF generate beside it (load.jsonl, train.jsonl, decode.jsonl)
# decode MODEL...  batch-1 and batch-16 greedy decode, ours and HF generate (decode.jsonl)
# serve            HTTP serving, 1 and 16 streams (serve.jsonl)
# multi-lora [MODEL...]  one decode batch of 16 sequences over 1, 4 and 16 distinct random r=16 adapters
#                  (adapter slots, one forward a step) vs one adapter, beside the no-LoRA batch and one
#                  forward per adapter (multi-lora.jsonl); default llama3.2-1b
set -u
OUT=${OUT:-/tmp/gpu-measure}
mkdir -p "$OUT"
json() { grep '^{' || true; }
stamp() { sed "s/^{/{\"call\":\"$CALL\",\"gpu\":\"$GPU\",/"; }
CALL=${CALL:-$(date -u +%Y-%m-%dT%H:%MZ)}
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
GPU=${GPU:-unknown}
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
echo "{\"call\":\"$CALL\",\"gpu\":\"$GPU\",\"commit\":\"$COMMIT\",\"driver\":\"$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)\"}" >> "$OUT/calls.jsonl"
peft() { PYTHONUNBUFFERED=1 timeout "$1" python3 .tmp/peft_bench.py "${@:2}" 2>>"$OUT/peft-stderr.txt" | json | stamp; }

mode=${1:-}
shift || true
case "$mode" in
  kernels)
    timeout 200 bun test --timeout 120000 kernels 2>    timeout 200 bun test kernels 2>&11 | grep -E '^\(fail\)|^ *[0-9]+ (pass|fail|skip)|^error' > "$OUT/kernel-tests.txt"
    timeout 300 bun apps/cli/src/bench/gemm.ts --no-baselines ${GEMM_CONFIGS:+--configs "$GEMM_CONFIGS"} 2>/dev/null | json | stamp >> "$OUT/gemm.jsonl"
    ;;
  train)
    for m in "$@"; do
      timeout 150 bun run bench -- --train --model "$m" --batch 8 --seq 512 --rank 16 --steps 8 2>/dev/null | json | stamp >> "$OUT/train.jsonl"
      timeout 100 bun run bench -- --train --model "$m" --batch 8 --seq 512 --rank 16 --steps 8 --target-fraction 0.3 2>/dev/null | json | stamp >> "$OUT/train.jsonl"
      peft 200 --models "$m" --gc 1 --decode 0 --steps 10 >> "$OUT/train.jsonl"
    done
    ;;
  load)
    m=${1:?usage: gpu-measure.sh load MODEL}
    dir=/tmp/hf-$m
    peft 200 --models "$m" --save "$dir" > /dev/null
    PYTHONUNBUFFERED=1 timeout 200 python3 - "$dir" "$m" <<'PY' 2>>"$OUT/peft-stderr.txt" | json | stamp >> "$OUT/load.jsonl"
import json, sys, time, torch
from transformers import AutoModelForCausalLM
d, name = sys.argv[1], sys.argv[2]
torch.cuda.synchronize(); t = time.perf_counter()
m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, device_map='cuda')
torch.cuda.synchronize()
print(json.dumps(dict(peer='hf-from-pretrained', model=name, load_s=round(time.perf_counter() - t, 1))))
PY
    ls -la "$dir" > "$OUT/load-dir-$m.txt"
    fromdir() { sed "s#\"model\":\"$dir\"#\"model\":\"$m\",\"from_dir\":true#"; }
    timeout 300 bun run bench -- --train --model "$dir" --batch 8 --seq 512 --rank 16 --steps 6 2>/dev/null | json | fromdir | stamp >> "$OUT/train.jsonl"
    timeout 150 bun run bench -- --decode --model "$dir" --tokens 128 2>/dev/null | json | fromdir | stamp >> "$OUT/decode.jsonl"
    # Where a decode step's time goes at 8B (every kernel label), for the ≥ 100 tok/s target; the
    # same 128 decoded tokens as the timed run, so its attention splits the keys as the timed run does.
    timeout 60 bun run bench -- --decode --model "$dir" --tokens 128 --profile 2>/dev/null | json | fromdir | stamp >> "$OUT/profile.jsonl"
    PYTHONUNBUFFERED=1 timeout 150 python3 -c "import sys, torch; sys.path.insert(0, '.tmp'); import peft_bench as pb; pb.decode('$m', torch.bfloat16, 64, 128)" 2>>"$OUT/peft-stderr.txt" | json | stamp >> "$OUT/decode.jsonl"
    rm -rf "$dir"
    ;;
  decode)
    for m in "$@"; do
      timeout 90 bun run bench -- --decode --model "$m" --tokens 128 2>/dev/null | json | stamp >> "$OUT/decode.jsonl"
      timeout 90 bun run bench -- --decode --model "$m" --tokens 64 --batch 16 2>/dev/null | json | stamp >> "$OUT/decode.jsonl"
      # HF generate through the reference script's own decode() (batch 1, 64-token prompt, 128 new tokens)
      PYTHONUNBUFFERED=1 timeout 150 python3 -c "import sys, torch; sys.path.insert(0, '.tmp'); import peft_bench as pb; pb.decode('$m', torch.bfloat16, 64, 128)" 2>>"$OUT/peft-stderr.txt" | json | stamp >> "$OUT/decode.jsonl"
    done
    ;;
  multi-lora)
    for m in "${@:-llama3.2-1b}"; do
      timeout 240 bun run bench -- --decode-loras 1,4,16 --model "$m" --batch 16 --tokens 64 --prompt-tokens 512 2>>"$OUT/peft-stderr.txt" | json | stamp >> "$OUT/multi-lora.jsonl"
    done
    ;;
  serve)
    timeout 150 bun run bench -- --serve --model smollm2-135m --streams 1,16 --tokens 128 --prompt-tokens 64 --weight-dtype f16 2>/dev/null | json | stamp >> "$OUT/serve.jsonl"
    ;;
  *)
    echo "usage: bash scripts/gpu-measure.sh kernels | train MODEL... | load MODEL | decode MODEL... | serve | multi-lora [MODEL...]" >&2
    exit 2
    ;;
esac
ls -l "$OUT"
