#!/usr/bin/env bash
# The one-call measurement session 4 ran on the GPU machine (H100, 2026-12-06T23:29Z), everything
# prioritised under a deadline DL seconds (device calls are limited to 10 minutes and starts are often
# refused, so the most important rows come first): kernel tests without robustness, the GEMM sweep
# writing the tile table (copied into kernels/src/gemm-tiles.json for the runs after it), Llama-3.2-1B
# ours vs HF PEFT, a transformers-saved Llama-3.1-8B loaded/trained/decoded, then the stage-cost
# variants and a 1B profile if time is left. Carry [".device", ".tmp"] (.tmp/peft_bench.py) and run
#   source .device/setup.sh >/dev/null 2>&1 && DL=480 bash scripts/gpu-call-prioritised.sh
# then: bun apps/cli/src/bench/report.ts <the files it wrote>.
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
DL=${DL:-480}
left() { echo $(( DL - ($(date +%s) - T0) )); }
export CALL=$(date -u +%Y-%m-%dT%H:%MZ)
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
bun run gpu-info 2>&1 | sed -n 1,3p
el tests
timeout 60 bun test kernels/test/matmul-subgroup.test.ts kernels/test/attention.test.ts kernels/test/convert.test.ts kernels/test/matmul.test.ts > $OUT/tests.txt 2>&1
grep -E '^\(fail\)|^ *[0-9]+ (pass|fail|skip)|^error' $OUT/tests.txt | head -12
el sweep
timeout 75 bun apps/cli/src/bench/gemm.ts --no-baselines --configs 4x4_1x1,4x4_2x2s,4x4_2x4s,4x4_4x2s,2x4_4x4s --write-table $OUT/gemm-tiles.json 2>/dev/null | grep '^{' | sed "s/^{/{\"call\":\"$CALL\",\"gpu\":\"$GPU\",\"robustness\":\"off\",/" > $OUT/gemm.jsonl
[ -s $OUT/gemm-tiles.json ] && cp $OUT/gemm-tiles.json kernels/src/gemm-tiles.json
el train-1b
OUT=$OUT timeout 110 bash scripts/gpu-measure.sh train llama3.2-1b > /dev/null 2>&1
el load-8b
[ $(left) -gt 170 ] && OUT=$OUT timeout $(( $(left) - 10 )) bash scripts/gpu-measure.sh load llama3.1-8b > /dev/null 2>&1
el extra
[ $(left) -gt 40 ] && timeout 25 bun apps/cli/src/bench/gemm.ts --quick --no-baselines --configs 4x4_2x4s,4x4_2x4s-no-loads,4x4_2x4s-no-stores,4x4_2x4s-no-products 2>/dev/null | grep '^{' > $OUT/gemm-diag.jsonl
[ $(left) -gt 50 ] && timeout $(( $(left) - 5 )) bun run bench -- --train --model llama3.2-1b --batch 8 --seq 512 --rank 16 --steps 4 --profile 2>/dev/null | grep '^{' > $OUT/train-1b-profile.jsonl
el done
python3 - <<'PY'
import json,os,collections
O=os.environ['OUT']
def rd(f):
  try: return [json.loads(l) for l in open(f'{O}/{f}') if l.strip()]
  except Exception as e: return []
rows=rd('gemm.jsonl')
t=collections.defaultdict(dict)
for r in rows:
  if 'tflops' in r: t[(r['shape'],r['transB'])][r['cfg']]=r['tflops']
cfgs=sorted({c for v in t.values() for c in v})
print('shape|tB|'+'|'.join(cfgs))
for k,v in t.items(): print(f"{k[0][:22]}|{int(k[1])}|"+'|'.join(str(v.get(c,'-')) for c in cfgs))
print('bad', [ (r['cfg'],r['shape'],r.get('error','')[:100], r.get('relErr')) for r in rows if 'error' in r or (r.get('relErr') or 0)>1e-3][:5])
for r in rd('gemm-diag.jsonl'): print('diag', r['cfg'], r['shape'][:14], r['transB'], r.get('tflops'), r.get('ms'))
for r in rd('train-1b-profile.jsonl'): print('1b profile', r['tok_s'], r['step_ms'], r['profile']['gpu_ms'], r['profile']['by_kind'], r['profile']['top'][:8])
for f in ['train.jsonl','load.jsonl','decode.jsonl']:
  for r in rd(f): print(f, {k:r[k] for k in r if k not in ('call','gpu','device','profile')})
PY
