#!/usr/bin/env bash
# One device call of measurements, prioritised under a deadline DL seconds (calls are limited to
# 10 minutes and starts are often refused, so the rows that decide the next step come first).
# Carry [".device", ".tmp"] (.tmp/peft_bench.py) and run
#   source .device/setup.sh >/dev/null 2>&1 && DL=540 bash scripts/gpu-call-prioritised.sh [STEPS]
# STEPS (default: tests variants gemm-probes attn-stages profile-1b decode-act-tests decode-act dispatch-floor decode-8b
# serve decode-1b train-3b train-keep-8b train-keep-small train-keep-1b full profile-full multi-lora wginit mma-peak
# tests-slow: session 17 had no GPU call and built GEMM forms (guard-free loads, constant strides, a 64×128 tile), the
# copy's probes and attention forms, all tested against float64 with emulated subgroup matrices on the CPU; the
# GEMM decides every unmet target of #12, so the GPU tests, the GEMM variants, the probes and the attention A/B come
# first, then session 16's decode A/Bs (both decode targets are met) and serving. The list is longer than one call: the
# `[Ns] step` lines of a call's output say where it stopped, and the next call passes the rest as STEPS; a list in
# .tmp/steps replaces both)
# is any of
#   tests        the GPU tests of what the call measures, quick files first (tests.txt; TEST_FILES replaces the
#                list, EXTRA_TESTS adds to it). A failure turns its form off for the rest of the call, except
#                failures that timed out or whose names hold an EXPERIMENTAL_TAGS fragment (comma-separated)
#   tests-slow   full-trainer.test.ts and matmul-subgroup.test.ts (210 s and 148 s on an H100 in session 11;
#                tests-slow.txt is not among the files that come back: its summary lines go to peft-stderr.txt)
#   mma-peak     the ceiling of subgroup-matrix MMAs alone and fed from workgroup memory (gemm.jsonl)
#   gemm-probes  the staged copy's stores (f16/u32/vec4), loads in flight (guarded/free), and the picks
#                on 132 against 264 workgroups (gemm.jsonl)
#   sweep        GEMM sweep over every model shape, best of 2 reps, writing the tile table, which
#                is copied into kernels/src/gemm-tiles.json for the rest of the call (gemm.jsonl)
#   train-1b     Llama-3.2-1B: ours (all labels, answer-only) and HF PEFT (train.jsonl)
#   profile-1b   one profiled 1B step, every kernel label (profile.jsonl)
#   profile-8b   one profiled Llama-3.1-8B step (profile.jsonl)
#   profile-qwen one profiled Qwen2.5-0.5B LoRA step (profile.jsonl)
#   profile-1b-fused-ab the same with the fused f16 copies (session 9, on since 11) off
#   profile-1b-attn-ab the same with attention's full-tile form (session 9, on since 11) off
#   wginit       the 1B profile and 1B decode with Dawn's workgroup-memory zero-init off (session 10)
#   profile-1b-ab the same with the forms still off by default (dk/dv per head, dW on tensor cores, staged attention tiles) off
#   profile-full one profiled full fine-tuning step of Qwen2.5-0.5B (profile.jsonl)
#   full-oom     full fine-tuning of Llama-3.1-8B, which must be refused with the memory statement (peft-stderr.txt)
#   train-small  SmolLM2-135M and Qwen2.5-0.5B, as train-1b
#   train-3b     Llama-3.2-3B, as train-1b
#   train-8b     Llama-3.1-8B and Qwen2.5-7B, as train-1b (train-llama8b, train-qwen7b: one of them)
#   train-keep   selective checkpointing within each model's memory room (KEEP, MODEL:GIB), with the
#                full-recompute row and HF's where the call has none (train-keep-1b/-8b/-small: one part)
#   dkv-dout     the 1B step profiled without the attention dk/dv pass staging dout (A/B vs profile-1b)
#   load-8b      Llama-3.1-8B saved by transformers: HF load vs ours, a train row and decode on it
#   full         full fine-tuning, ours and HF (`peft_bench.py --full 1`) on SmolLM2-135M, Qwen2.5-0.5B
#   decode-1b    batch-1/16 decode, ours and HF generate, the act A/B (decode.jsonl)
#   decode-act   the act A/B of decode-1b alone
#   decode-act-tests the GPU tests of the grouped GEMVs, fused norm and SwiGLU epilogue (summary in peft-stderr.txt)
#   decode-8b    Llama-3.1-8B batch-1 decode, ours, the fused GEMV prologues (A/B), a profile, and with DECODE_AB=1
#                session 9-11's GEMV A/Bs (grouping, depth 4/16) (decode.jsonl)
#   dispatch-floor what one tiny dispatch costs (dependent, independent, profiled) and decode's GEMVs in chains (decode.jsonl)
#   multi-lora   Llama-3.2-1B decode batch of 16 over 1/4/16 adapters in slots (multi-lora.jsonl)
#   serve        HTTP serving, 1 and 16 streams (serve.jsonl)
#   variants     the two-deep prefetch (`l`), double buffering, K slices and group sizes around the
#                sweep's two picks, and their stage costs (gemm.jsonl); sweeps at once when `l` gains
#   stages       the staged GEMM with one stage left out (loads, stores, products) on 4096³ (gemm.jsonl)
#   diag         GEMM shape diagnosis: N and K varied around 4096³, plain and grouped raster
#   attn-stages  attention kernels at the 1B shapes, the forward with one phase left out (profile.jsonl)
# At most 8 files come back from a call: everything goes into the 8 names above plus calls.jsonl
# and peft-stderr.txt. Then: bun apps/cli/src/bench/report.ts <the directory>.
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
DL=${DL:-540}
left() { echo $(( DL - ($(date +%s) - T0) )); }
export CALL=$(date -u +%Y-%m-%dT%H:%MZ)
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
# FORMS_ON: off-by-default forms a step of this call turned on for the rest of it (rows say so).
FORMS_ON=""
stamp() { sed "s/^{/{\"call\":\"$CALL\",\"gpu\":\"$GPU\",${FORMS_ON:+\"forms_on\":\"$FORMS_ON\",}/"; }
STEPS=${*:-tests variants gemm-probes attn-stages profile-1b decode-act-tests decode-act dispatch-floor decode-8b serve decode-1b train-3b train-keep-8b train-keep-small train-keep-1b full profile-full multi-lora wginit mma-peak tests-slow}
# A list left in .tmp/steps (carried with .tmp) replaces both: it re-orders a call already queued by a helper.
[ -s .tmp/steps ] && STEPS=$(cat .tmp/steps) && echo "steps from .tmp/steps: $STEPS"
bun run gpu-info 2>&1 | sed -n 1,3p
train() { # MODEL TIMEOUT: ours, ours answer-only, HF PEFT, skipped when the deadline is near
  for m in $1; do
    [ "$(left)" -gt "$2" ] || { el "skip train $m"; continue; }
    el "train $m"
    OUT=$OUT timeout "$2" bash scripts/gpu-measure.sh train "$m" > /dev/null 2>&1
  done
}
act_ab() { # 1B batch-1 decode, twice each, alternated: the defaults; gate/up + SwiGLU in one GEMV (act);
  # decode attention in one pass below 256 keys (no combine dispatch; the bench's context is 161 keys);
  # without the pre-encoded next step (on by default)
  for r in 1 2; do
    [ "$(left)" -gt 30 ] && TUNELOOM_GEMV_FUSE=norm,act timeout 30 bun run bench -- --decode --model llama3.2-1b --tokens 128 2>/dev/null | grep '^{' | sed 's/^{/{"ab_on":"gemv_fuse_act",/' | stamp >> $OUT/decode.jsonl
    [ "$(left)" -gt 30 ] && timeout 30 bun run bench -- --decode --model llama3.2-1b --tokens 128 2>/dev/null | grep '^{' | stamp >> $OUT/decode.jsonl
    [ "$(left)" -gt 30 ] && TUNELOOM_DECODE_SPLIT_KEYS=256 timeout 30 bun run bench -- --decode --model llama3.2-1b --tokens 128 2>/dev/null | grep '^{' | sed 's/^{/{"ab_on":"decode_split_keys_256",/' | stamp >> $OUT/decode.jsonl
    # session 16 (after its call): the next step's command buffer encoded while the GPU runs this one, off
    [ "$(left)" -gt 30 ] && TUNELOOM_DECODE_PREENCODE=0 timeout 30 bun run bench -- --decode --model llama3.2-1b --tokens 128 2>/dev/null | grep '^{' | sed 's/^{/{"ab_off":"decode_preencode",/' | stamp >> $OUT/decode.jsonl
  done
}
keep_rows() { # "MODEL:GIB ...": selective checkpointing rows (train-keep below)
  # Session 14: selective checkpointing (trainer's selective-checkpoint.ts): layers keep their
  # attention output and then their MLP's gate and up instead of recomputing them, within a budget
  # (`--keep-activations-gib`). KEEP lists MODEL:GIB; the defaults are each model's room under its
  # memory target from the last measured peaks (1B: 0.7 × 8.64 − 4.23; 8B: 22.42 − 19.43; Qwen2.5-0.5B:
  # 0.5 × 8.22 − 2.16; SmolLM2: 0.5 × 2.76 − 1.00), less a margin. The full-recompute row and HF PEFT run
  # too where this call has no line of its own for the model.
  for mk in $1; do
    m=${mk%%:*} gib=${mk##*:}
    [ "$(left)" -gt 90 ] || { el "skip train-keep $m"; continue; }
    el "train-keep $m $gib GiB"
    # the full-recompute row of this call first, where the call has none (the A/B's other side)
    grep -q "\"op\":\"train\",\"model\":\"$m\"" $OUT/train.jsonl 2>/dev/null || \
      timeout 150 bun run bench -- --train --model "$m" --batch 8 --seq 512 --rank 16 --steps 8 2>/dev/null | grep '^{' | stamp >> $OUT/train.jsonl
    timeout 150 bun run bench -- --train --model "$m" --batch 8 --seq 512 --rank 16 --steps 8 --keep-activations-gib "$gib" 2>/dev/null | grep '^{' | stamp >> $OUT/train.jsonl
    grep -q "\"peer\":\"hf-peft\",\"model\":\"$m\"" $OUT/train.jsonl 2>/dev/null || [ "$(left)" -lt 120 ] || \
      PYTHONUNBUFFERED=1 timeout 200 python3 .tmp/peft_bench.py --models "$m" --gc 1 --decode 0 --steps 10 2>>$OUT/peft-stderr.txt | grep '^{' | stamp >> $OUT/train.jsonl
  done
}
sweep() { # GEMM sweep over every model shape, best of 2; its table replaces kernels/src/gemm-tiles.json for the rest of the call
  [ "$(left)" -gt 100 ] || { el "skip sweep"; return; }
  el sweep
  timeout $(( $(left) - 10 < 170 ? $(left) - 10 : 170 )) bun apps/cli/src/bench/gemm.ts --no-baselines --reps 2 --configs ${SWEEP_CONFIGS:-4x4_2x2sk64g8,4x4_2x2sg8u,2x4_4x2sk64g8u,4x2_2x4sk64g8u,4x4_2x2sg8} --write-table $OUT/gemm-tiles.json 2>/dev/null | grep '^{' | stamp >> $OUT/gemm.jsonl
  [ -s $OUT/gemm-tiles.json ] && cp $OUT/gemm-tiles.json kernels/src/gemm-tiles.json
}
for step in $STEPS; do
  case $step in
    tests)
      [ "$(left)" -gt 60 ] || { el "skip tests"; continue; }
      el tests
      # The files that decide the off-by-default forms first, so a timeout costs only the rest.
      timeout $(( $(left) - 10 < ${TESTS_TIMEOUT:-110} ? $(left) - 10 : ${TESTS_TIMEOUT:-110} )) bun test --timeout 120000 ${TEST_FILES:-packages/trainer/test/gpu-step.test.ts packages/model/test/residual-in-place.test.ts kernels/test/rope.test.ts packages/model/test/decode-replay.test.ts kernels/test/gemv.test.ts kernels/test/matmul-tc-staged-copy.test.ts kernels/test/swiglu.test.ts kernels/test/rmsnorm.test.ts kernels/test/convert.test.ts kernels/test/cross-entropy.test.ts packages/model/test/lora-dropout.test.ts kernels/test/attention.test.ts} ${EXTRA_TESTS:-} > $OUT/tests.txt 2>&1
      grep -E '^\(fail\)|^ *[0-9]+ (pass|fail|skip)|^error' $OUT/tests.txt | head -12
      # The gates below read the failures of established forms only: a test of an off-by-default form lists
      # every form it runs with in its name, so its failure would turn those off too (session 15's lazy
      # forward turned off the one-sweep, padded, staged, per-head and full-tile forms for the rest of its
      # call). EXPERIMENTAL_TAGS (comma-separated name fragments of such forms) are left out; timeouts too.
      FAILS=/tmp/gating-fails.txt
      awk '/^\(fail\)/ { name = $0; sub(/ \[[0-9.]+m?s\]$/, "", name); fails[name] = 1; last = name; next }
        /timed out after/ { if (last != "") slow[last] = 1 } { last = "" }
        END { for (n in fails) if (!(n in slow)) print n }' $OUT/tests.txt | sort > $FAILS.all
      # Session 17's attention forms (off by default, never run on a GPU) are experimental by default.
      IFS=',' read -ra XTAGS <<< "${EXPERIMENTAL_TAGS:-scores in registers,P and dS in one tile}"
      cp $FAILS.all $FAILS; for t in "${XTAGS[@]}"; do [ -n "$t" ] && { grep -vF -- "$t" $FAILS > $FAILS.tmp || true; mv $FAILS.tmp $FAILS; }; done
      # LoRA on tensor cores, the one-sweep attention forward and the padded attention tiles are on
      # by default (session 6); a form whose tests fail here is turned off for the rest of the call.
      grep -q '^(fail) LoRA on tensor cores' $FAILS && { export TUNELOOM_LORA_TC=0; el "TUNELOOM_LORA_TC=0"; }
      grep -q '^(fail) .*one-sweep forward' $FAILS && { export TUNELOOM_ATTN_ONE_SWEEP=0; el "TUNELOOM_ATTN_ONE_SWEEP=0"; }
      grep -q '^(fail) .*padded tiles' $FAILS && { export TUNELOOM_ATTN_PAD=0; el "TUNELOOM_ATTN_PAD=0"; }
      # dW on tensor cores, dk/dv per query head and staged attention tiles: on by default since session 7.
      grep -q '^(fail) weight gradient on tensor cores' $FAILS && { export TUNELOOM_DW_TC=0; el "TUNELOOM_DW_TC=0"; }
      grep -q '^(fail) .*dk/dv per query head' $FAILS && { export TUNELOOM_ATTN_DKV_PER_HEAD=0; el "TUNELOOM_ATTN_DKV_PER_HEAD=0"; }
      grep -q '^(fail) .*staged tiles' $FAILS && { export TUNELOOM_ATTN_STAGE=0; el "TUNELOOM_ATTN_STAGE=0"; }
      # Session 7: staged thin products / split-K weight gradients, LoRA's dA and dB on tensor cores.
      grep -q '^(fail) .*thin split-K\|^(fail) weight gradient on tensor cores' $FAILS && { export TUNELOOM_SMALL_STAGED=0; el "TUNELOOM_SMALL_STAGED=0"; }
      grep -q '^(fail) .*dA and dB split over tokens' $FAILS && { export TUNELOOM_LORA_GRAD_TC=0; el "TUNELOOM_LORA_GRAD_TC=0"; }
      # Session 7, written after its last call: the one-pass cross-entropy backward (dh only).
      grep -q '^(fail) .*one-pass dh' $FAILS && { export TUNELOOM_CE_ONE_PASS=0; el "TUNELOOM_CE_ONE_PASS=0"; }
      # Session 8's LoRA f16 weight copies: on by default since session 9 (its test passed on the H100).
      grep -q '^(fail) .*f16 copies of A, B and s·B' $FAILS && { export TUNELOOM_LORA_F16_COPIES=0; el "TUNELOOM_LORA_F16_COPIES=0"; }
      # Session 9's f16 copies written by SwiGLU and RMSNorm and attention's full tiles: on by default
      # since session 11 (their tests passed on an H100); off for the rest of the call if they fail here.
      if grep -q "^(fail) .*the step's loss and gradients are the f32 step's\|^(fail) .*fused 16-bit cop\|^(fail) .*fused copies on and off" $FAILS; then export TUNELOOM_FUSED_F16=0; el "TUNELOOM_FUSED_F16=0"; fi
      grep -q "^(fail) .*full tiles unmasked" $FAILS && { export TUNELOOM_ATTN_FULL_TILES=0; el "TUNELOOM_ATTN_FULL_TILES=0"; }
      # Session 13: RoPE's f16 copies of q, k, v (on since session 13's call): off for the rest of the call if its test fails.
      grep -q "^(fail) .*RoPE's f16 copies" $FAILS && { export TUNELOOM_ROPE_F16=0; el "TUNELOOM_ROPE_F16=0"; }
      # Session 14: the dk/dv pass staging dout (on since session 14's call): off for the rest of the call if its tests fail.
      grep -q "^(fail) .*dout staged$" $FAILS && { export TUNELOOM_ATTN_DKV_DOUT=0; el "TUNELOOM_ATTN_DKV_DOUT=0"; }
      # Session 11, written after its last call: inference's in-place residual stream (decoder-layer.ts);
      # on GPUs its prefill-sized products accumulate on tensor cores. A failure here is a bug to fix.
      grep -q "^(fail) the residual stream updated in place" $FAILS && el "residual-in-place tests FAILED: decode/prefill numbers of this call are suspect"
      # Session 12: the fused GEMV prologues are measured only as A/B rows (ab_on gemv_fuse); flag them.
      grep -q "^(fail) gemv with the RMSNorm fused\|^(fail) gemv with SwiGLU fused\|^(fail) decode with the RMSNorm and SwiGLU fused\|^(fail) gemv group against float64" $FAILS && el "fused GEMV prologue or grouped GEMV tests FAILED: the gemv_fuse and gemv_group rows of this call are suspect"
      grep "^(fail) LoRA training step on the GPU > \(gradient checkpointing\|16-bit weights\)" $FAILS | grep -q . && el "checkpointing tests FAILED: the recompute (session 12) is wrong on this GPU; train rows are suspect"
      # (Decode's grouped GEMVs and fused norm stay off here: decode-1b and decode-8b measure them as A/B rows.)
      true ;;
    sweep) sweep ;;
    train-1b) train llama3.2-1b 120 ;;
    mma-peak)
      [ "$(left)" -gt 40 ] && el mma-peak && timeout 40 bun apps/cli/src/bench/mma-peak.ts 2>&1 | grep '^{' | stamp >> $OUT/gemm.jsonl ;;
    gemm-probes)
      # Session 17's probes of the staged copy (docs/kernels.md "Session 17"): staging stores as eight
      # f16 / four u32 / one vec4 store, loads in flight with and without bounds tests; then the
      # picks on 132 and 264 tiles of 128×128 (one against two workgroups an SM: equal times mean two fit).
      [ "$(left)" -gt 40 ] && el gemm-probes && timeout 40 bun apps/cli/src/bench/gemm-probes.ts 2>&1 | grep '^{' | stamp >> $OUT/gemm.jsonl
      [ "$(left)" -gt 40 ] && timeout 40 bun apps/cli/src/bench/gemm.ts --no-baselines --reps 2 --configs 4x4_2x2sg8u,4x2_2x4sk64g8u,4x2_2x4sk64g8un \
        --shapes 1408x1536x8192,1408x3072x8192 2>/dev/null | grep '^{' | sed 's/^{/{"diag":true,"occupancy_probe":true,/' | stamp >> $OUT/gemm.jsonl ;;
    profile-1b)
      [ "$(left)" -gt 40 ] && el profile && timeout 40 bun run bench -- --train --model llama3.2-1b --batch 8 --seq 512 --rank 16 --steps 3 --profile 2>/dev/null | grep '^{' | stamp >> $OUT/profile.jsonl ;;
    profile-qwen)
      # Session 10: one profiled Qwen2.5-0.5B LoRA step (152k vocabulary: where its time goes, for the ≥ 2× target).
      [ "$(left)" -gt 40 ] && el profile-qwen && timeout 40 bun run bench -- --train --model qwen2.5-0.5b --batch 8 --seq 512 --rank 16 --steps 3 --profile 2>/dev/null | grep '^{' | stamp >> $OUT/profile.jsonl ;;
    profile-8b)
      # One profiled Llama-3.1-8B step (built-in shape, random weights): where the 8B time goes.
      [ "$(left)" -gt 150 ] && el profile-8b && timeout 150 bun run bench -- --train --model llama3.1-8b --batch 8 --seq 512 --rank 16 --steps 2 --profile 2>/dev/null | grep '^{' | stamp >> $OUT/profile.jsonl ;;
    decode-8b)
      # Llama-3.1-8B batch-1 decode on one random bf16 model HF saves on the GPU (seconds; writing the
      # 16 GB of random weights from JS took over the 60 s each run had, so session 11's first call got
      # no rows): the defaults, the fused GEMV prologues (A/B), a profile; DECODE_AB=1 adds session
      # 9-11's A/Bs (grouped GEMVs on, GEMV depth 4 and 16). Session 11's 95.9 tok/s row ran with the
      # grouped GEMVs on (a test gate turned them on for the call; removed in session 12).
      [ "$(left)" -gt 90 ] || { el "skip decode-8b"; continue; }
      el decode-8b
      d8=/tmp/hf-llama3.1-8b-decode
      PYTHONUNBUFFERED=1 timeout $(( $(left) - 45 < 120 ? $(left) - 45 : 120 )) python3 .tmp/peft_bench.py --models llama3.1-8b --save "$d8" > /dev/null 2>>$OUT/peft-stderr.txt
      fromdir() { sed "s#\"model\":\"$d8\"#\"model\":\"llama3.1-8b\",\"from_dir\":true#"; }
      [ "$(left)" -gt 45 ] && timeout 60 bun run bench -- --decode --model "$d8" --tokens 96 2>/dev/null | grep '^{' | fromdir | stamp >> $OUT/decode.jsonl
      # Session 16: the grouped GEMVs and the fused norm are the defaults (1B 272.3 → 371.6, 8B 87.5 → 101.1 tok/s,
      # H100, one call); A/B: gate/up + SwiGLU in one GEMV (act), and each default off
      [ "$(left)" -gt 45 ] && TUNELOOM_GEMV_FUSE=norm,act timeout 60 bun run bench -- --decode --model "$d8" --tokens 96 2>/dev/null | grep '^{' | fromdir | sed 's/^{/{"ab_on":"gemv_fuse_act",/' | stamp >> $OUT/decode.jsonl
      [ "$(left)" -gt 45 ] && timeout 60 bun run bench -- --decode --model "$d8" --tokens 96 2>/dev/null | grep '^{' | fromdir | stamp >> $OUT/decode.jsonl
      [ "$(left)" -gt 45 ] && TUNELOOM_DECODE_PREENCODE=0 timeout 60 bun run bench -- --decode --model "$d8" --tokens 96 2>/dev/null | grep '^{' | fromdir | sed 's/^{/{"ab_off":"decode_preencode",/' | stamp >> $OUT/decode.jsonl
      [ "$(left)" -gt 45 ] && [ "${DECODE_AB:-0}" = 1 ] && TUNELOOM_GEMV_FUSE=0 timeout 60 bun run bench -- --decode --model "$d8" --tokens 96 2>/dev/null | grep '^{' | fromdir | sed 's/^{/{"ab_off":"gemv_fuse_norm",/' | stamp >> $OUT/decode.jsonl
      [ "$(left)" -gt 45 ] && [ "${DECODE_AB:-0}" = 1 ] && TUNELOOM_GEMV_GROUP=0 TUNELOOM_GEMV_FUSE=0 timeout 60 bun run bench -- --decode --model "$d8" --tokens 96 2>/dev/null | grep '^{' | fromdir | sed 's/^{/{"ab_off":"gemv_group+fuse_norm",/' | stamp >> $OUT/decode.jsonl
      # Session 11: eight words of W in flight per thread (gemv-rows.ts gemvDepth) is the default; four for the A/B.
      [ "$(left)" -gt 45 ] && [ "${DECODE_AB:-0}" = 1 ] && TUNELOOM_GEMV_DEPTH=4 timeout 60 bun run bench -- --decode --model "$d8" --tokens 96 2>/dev/null | grep '^{' | fromdir | sed 's/^{/{"ab_off":"gemv_depth8",/' | stamp >> $OUT/decode.jsonl
      [ "$(left)" -gt 45 ] && [ "${DECODE_AB:-0}" = 1 ] && TUNELOOM_GEMV_DEPTH=16 timeout 60 bun run bench -- --decode --model "$d8" --tokens 96 2>/dev/null | grep '^{' | fromdir | sed 's/^{/{"ab_on":"gemv_depth16",/' | stamp >> $OUT/decode.jsonl
      # Session 12: RMSNorm and SwiGLU fused as GEMV prologues (8B, session 13: 87.3 tok/s against 98.0), A/B.
      [ "$(left)" -gt 45 ] && [ "${DECODE_AB:-0}" = 1 ] && TUNELOOM_GEMV_FUSE=1 timeout 60 bun run bench -- --decode --model "$d8" --tokens 96 2>/dev/null | grep '^{' | fromdir | sed 's/^{/{"ab_on":"gemv_fuse",/' | stamp >> $OUT/decode.jsonl
      [ "$(left)" -gt 45 ] && timeout 60 bun run bench -- --decode --model "$d8" --tokens 96 --profile 2>/dev/null | grep '^{' | fromdir | stamp >> $OUT/profile.jsonl
      rm -rf "$d8" ;;
    wginit)
      # Session 10: Dawn's zero-initialisation of workgroup memory off (toggle disable_workgroup_init):
      # the 1B step profiled and 8B decode with it (ab_on rows, against profile-1b and decode-8b).
      # Every kernel here writes its workgroup memory before reading it; the GPU tests with the toggle
      # on (TUNELOOM_DAWN_ENABLE=disable_workgroup_init bun test --timeout 120000 ...) must pass before it is adopted.
      [ "$(left)" -gt 40 ] && el wginit && TUNELOOM_DAWN_ENABLE=disable_workgroup_init timeout 40 bun run bench -- --train --model llama3.2-1b --batch 8 --seq 512 --rank 16 --steps 3 --profile 2>/dev/null | grep '^{' | sed 's/^{/{"ab_on":"no_workgroup_init",/' | stamp >> $OUT/profile.jsonl
      [ "$(left)" -gt 40 ] && TUNELOOM_DAWN_ENABLE=disable_workgroup_init timeout 40 bun run bench -- --decode --model llama3.2-1b --tokens 96 2>/dev/null | grep '^{' | sed 's/^{/{"ab_on":"no_workgroup_init",/' | stamp >> $OUT/decode.jsonl
      [ "$(left)" -gt 40 ] && timeout 40 bun run bench -- --decode --model llama3.2-1b --tokens 96 2>/dev/null | grep '^{' | stamp >> $OUT/decode.jsonl ;;
    profile-1b-fused-ab)
      # Session 9: the 1B step with the fused f16 copies off (A/B against profile-1b in the same call).
      [ "$(left)" -gt 40 ] && el profile-fused-ab && TUNELOOM_FUSED_F16=0 timeout 40 bun run bench -- --train --model llama3.2-1b --batch 8 --seq 512 --rank 16 --steps 3 --profile 2>/dev/null | grep '^{' | sed 's/^{/{"ab_off":"fused_f16",/' | stamp >> $OUT/profile.jsonl ;;
    profile-1b-attn-ab)
      # Session 9: the 1B step with attention's full-tile form off (A/B against profile-1b).
      [ "$(left)" -gt 40 ] && el profile-attn-ab && TUNELOOM_ATTN_FULL_TILES=0 timeout 40 bun run bench -- --train --model llama3.2-1b --batch 8 --seq 512 --rank 16 --steps 3 --profile 2>/dev/null | grep '^{' | sed 's/^{/{"ab_off":"attn_full_tiles",/' | stamp >> $OUT/profile.jsonl ;;
    profile-1b-ab)
      # The same step with the forms that are still off by default switched off again (A/B in one call).
      [ "$(left)" -gt 40 ] && el profile-ab && TUNELOOM_ATTN_DKV_PER_HEAD=0 TUNELOOM_DW_TC=0 TUNELOOM_ATTN_STAGE=0 timeout 40 bun run bench -- --train --model llama3.2-1b --batch 8 --seq 512 --rank 16 --steps 3 --profile 2>/dev/null | grep '^{' | sed 's/^{/{"ab_off":true,/' | stamp >> $OUT/profile.jsonl ;;
    profile-full)
      # One profiled full fine-tuning step of Qwen2.5-0.5B (every kernel label).
      [ "$(left)" -gt 50 ] && el profile-full && timeout 50 bun run bench -- --train --full --model qwen2.5-0.5b --batch 8 --seq 512 --steps 3 --profile 2>>$OUT/peft-stderr.txt | grep '^{' | stamp >> $OUT/profile.jsonl ;;
    full-oom)
      # Full fine-tuning of Llama-3.1-8B needs ~130 GB: the device's allocation fails and the run
      # must be refused with the memory statement (its stderr goes to peft-stderr.txt).
      [ "$(left)" -gt 130 ] && el full-oom && { echo "== full-oom llama3.1-8b"; timeout 120 bun run bench -- --train --full --model llama3.1-8b --batch 8 --seq 512 --steps 2; echo "== rc $?"; } >> $OUT/peft-stderr.txt 2>&1 ;;
    train-keep) keep_rows "${KEEP:-llama3.2-1b:1.75 llama3.1-8b:2.9 qwen2.5-0.5b:1.9 smollm2-135m:0.35}" ;;
    train-keep-1b) keep_rows "llama3.2-1b:1.75" ;;
    train-keep-8b) keep_rows "llama3.1-8b:2.9" ;;
    train-keep-small) keep_rows "qwen2.5-0.5b:1.9 smollm2-135m:0.35" ;;
    dkv-dout)
      # Session 14: the attention dk/dv pass staging dout as well as q (attention-tc.ts dkvDoutStaged, on
      # since session 14's call: 1B dk/dv 12.4 → 9.7 ms, H100). The 1B step profiled without it (ab_off
      # dkv_dout; compare with profile-1b of the same call).
      [ "$(left)" -gt 45 ] || { el "skip dkv-dout"; continue; }
      el dkv-dout
      TUNELOOM_ATTN_DKV_DOUT=0 timeout 40 bun run bench -- --train --model llama3.2-1b --batch 8 --seq 512 --rank 16 --steps 3 --profile 2>/dev/null | grep '^{' | sed 's/^{/{"ab_off":"dkv_dout",/' | stamp >> $OUT/profile.jsonl ;;
    train-small) train "smollm2-135m qwen2.5-0.5b" 90 ;;
    train-3b) train llama3.2-3b 150 ;;
    train-8b) train "llama3.1-8b qwen2.5-7b" 240 ;;
    train-llama8b) train llama3.1-8b 240 ;;
    train-qwen7b) train qwen2.5-7b 240 ;;
    load-8b)
      # Llama-3.1-8B saved by transformers: HF from_pretrained vs our load (read vs GPU wait), a
      # training row and batch-1 decode on that directory (load.jsonl, train.jsonl, decode.jsonl).
      [ "$(left)" -gt 200 ] && el load-8b && OUT=$OUT timeout $(( $(left) - 10 )) bash scripts/gpu-measure.sh load llama3.1-8b > /dev/null 2>&1 ;;
    full)
      for m in smollm2-135m qwen2.5-0.5b; do
        [ "$(left)" -gt 60 ] || continue
        el "full $m"
        timeout $(( $(left) / 2 )) bun run bench -- --train --full --model "$m" --batch 8 --seq 512 --steps 8 2>>$OUT/peft-stderr.txt | grep '^{' | stamp >> $OUT/train.jsonl
        PYTHONUNBUFFERED=1 timeout $(( $(left) - 5 )) python3 .tmp/peft_bench.py --models "$m" --full 1 --gc 1 --decode 0 --steps 8 2>>$OUT/peft-stderr.txt | grep '^{' | stamp >> $OUT/train.jsonl
      done ;;
    multi-lora)
      [ "$(left)" -gt 60 ] && el multi-lora && OUT=$OUT timeout $(( $(left) - 10 < 200 ? $(left) - 10 : 200 )) bash scripts/gpu-measure.sh multi-lora llama3.2-1b > /dev/null 2>&1 ;;
    serve)
      [ "$(left)" -gt 60 ] && el serve && OUT=$OUT timeout 150 bash scripts/gpu-measure.sh serve > /dev/null 2>&1 ;;
    decode-1b)
      [ "$(left)" -gt 60 ] && el decode && OUT=$OUT timeout 60 bash scripts/gpu-measure.sh decode llama3.2-1b > /dev/null 2>&1
      # Session 14 measured the fused GEMV prologues (264.6 against 274.5) and depth 4 (239.5): both lost.
      # Session 15: a profiled 1B step (GPU time per token against the wall time above: what the CPU round
      # trip of each token costs) and GEMV depth 16.
      [ "$(left)" -gt 40 ] && timeout 40 bun run bench -- --decode --model llama3.2-1b --tokens 128 --profile 2>/dev/null | grep '^{' | stamp >> $OUT/decode.jsonl
      # Session 16 (one call, H100): the grouped GEMVs 272.3 → 368.8 tok/s, with the fused norm 371.6: both on by
      # default now. A/B: gate/up + SwiGLU in one GEMV (act), twice each, alternated; the defaults off (DECODE_AB=1).
      act_ab
      [ "$(left)" -gt 40 ] && [ "${DECODE_AB:-0}" = 1 ] && TUNELOOM_GEMV_GROUP=0 TUNELOOM_GEMV_FUSE=0 timeout 40 bun run bench -- --decode --model llama3.2-1b --tokens 128 2>/dev/null | grep '^{' | sed 's/^{/{"ab_off":"gemv_group+fuse_norm",/' | stamp >> $OUT/decode.jsonl ;;
    decode-act) el decode-act && act_ab ;;
    decode-act-tests)
      # Session 16: the GPU tests of the pre-encoded decode step, padded prefill, the grouped GEMVs, the fused norm and the SwiGLU epilogue (act)
      [ "$(left)" -gt 100 ] && el decode-act-tests && timeout 90 bun test --timeout 120000 kernels/test/recorder-prepare.test.ts kernels/test/gemv.test.ts packages/model/test/decode-replay.test.ts packages/model/test/prefill-many.test.ts > /tmp/tests-act.txt 2>&1
      { echo "== decode-act-tests"; grep -E '^\(fail\)|^ *[0-9]+ (pass|fail|skip)|^error' /tmp/tests-act.txt | head -20; } >> $OUT/peft-stderr.txt
      # Forms on by default since session 16 (pre-encoding and padding untested on a GPU until this step): off for the rest of the call if their tests fail here.
      grep -q '^(fail) .*padded steps' /tmp/tests-act.txt && { export TUNELOOM_PREFILL_PAD=0; el "TUNELOOM_PREFILL_PAD=0"; }
      grep -q '^(fail) Recorder.prepare\|^(fail) .*submits the command buffer encoded' /tmp/tests-act.txt && { export TUNELOOM_DECODE_PREENCODE=0; el "TUNELOOM_DECODE_PREENCODE=0"; }
      grep -q '^(fail) gemv group against float64 > with the RMSNorm\|^(fail) decode with the RMSNorm and SwiGLU fused into its GEMVs > grouped GEMVs on, norm:' /tmp/tests-act.txt && { export TUNELOOM_GEMV_FUSE=0; el "TUNELOOM_GEMV_FUSE=0"; }
      grep -q '^(fail) gemv group against float64 > N = ' /tmp/tests-act.txt && { export TUNELOOM_GEMV_GROUP=0; el "TUNELOOM_GEMV_GROUP=0"; }
      true ;;
    dispatch-floor)
      # Session 16: what a dispatch costs when it does almost nothing (dependent chain, independent,
      # as the profiler times it) and decode's RMSNorm/GEMVs in chains (decode.jsonl, op dispatch-floor).
      [ "$(left)" -gt 60 ] && el dispatch-floor && timeout 70 bun apps/cli/src/bench/dispatch-floor.ts 2>/dev/null | grep '^{' | stamp >> $OUT/decode.jsonl ;;
    tests-slow)
      [ "$(left)" -gt 120 ] || { el "skip tests-slow"; continue; }
      el tests-slow
      timeout $(( $(left) - 10 )) bun test --timeout 120000 packages/trainer/test/full-trainer.test.ts kernels/test/matmul-subgroup.test.ts > /tmp/tests-slow.txt 2>&1
      { echo "== tests-slow"; grep -E '^\(fail\)|^ *[0-9]+ (pass|fail|skip)|^error' /tmp/tests-slow.txt | head -40; } >> $OUT/peft-stderr.txt ;;
    attn-stages)
      # Session 12: the attention kernels at the 1B shapes, and the one-sweep forward with one phase of
      # its key-tile loop left out (TUNELOOM_ATTN_DIAG; results wrong by design): where its ~0.46 ms a
      # layer goes (profile.jsonl, op attention_fwd, tagged attn_diag).
      # Session 17: the forward keeping its scores in registers (TUNELOOM_ATTN_REG_SCORES=1, attn_diag
      # "reg-scores"), first, against the plain row ("none") of the same call.
      [ "$(left)" -gt 60 ] && el attn-stages && for d in "" reg-scores no-softmax no-pv no-oupdate no-barriers no-scores no-max no-stage; do
        rs=0; diag=$d; [ "$d" = reg-scores ] && { rs=1; diag=; }
        [ "$(left)" -gt 20 ] && TUNELOOM_ATTN_REG_SCORES=$rs TUNELOOM_ATTN_DIAG=$diag timeout 30 bun run bench -- --kernels --ops attention --model llama3.2-1b 2>/dev/null | grep '^{' | sed "s/^{/{\"attn_diag\":\"${d:-none}\",/" | stamp >> $OUT/profile.jsonl
      done ;;
    diag)
      [ "$(left)" -gt 30 ] && el diag && timeout $(( $(left) - 10 )) bun apps/cli/src/bench/gemm.ts --no-baselines --reps 2 --configs 4x4_2x2s,4x4_2x2sg8,2x4_4x4s \
        --shapes 4096x2048x4096,4096x8192x4096,4096x16384x4096,4096x4096x2048,4096x4096x8192,8192x4096x4096,4096x8192x2048 2>/dev/null | grep '^{' | sed 's/^{/{"diag":true,/' | stamp >> $OUT/gemm.jsonl ;;
    stages)
      # What each stage of the staged GEMM costs: the table's forward pick with one stage left out
      # (results wrong by design), against mma-peak's ceiling.
      [ "$(left)" -gt 40 ] && el stages && timeout $(( $(left) - 10 < 60 ? $(left) - 10 : 60 )) bun apps/cli/src/bench/gemm.ts --no-baselines --reps 2 \
        --configs 4x4_2x2sk64g8,4x4_2x2sk64g8-no-loads,4x4_2x2sk64g8-no-stores,4x4_2x2sk64g8-no-products,4x4_2x2sg8,4x4_2x2sg8-no-stores \
        --shapes 4096x4096x4096 2>/dev/null | grep '^{' | sed 's/^{/{"diag":true,/' | stamp >> $OUT/gemm.jsonl ;;
    variants)
      # Session 13 (H100): copy subgroups (warp specialisation, 0.56-0.63× of the picks: their per-half
      # stores starve the products; removed), the 16-warp tiles (0.88-1.04×) and 2×2-matrix subgroups
      # (0.76-0.80×) lost; group 16 and the two-deep prefetch tied g8 on the stable shapes. Measured
      # again: those closest to the picks. First: B's matrices straight from global memory (`b`: only A
      # staged, half the per-half stores; W's 16×16 blocks read through L1/L2 by each subgroup column).
      # Session 11 (H100): the sweep's picks are 4x2_2x4sk64g8u for dy·W (205-229 TFLOP/s) and
      # 4x4_2x2sg8u for x·Wᵀ (175-191); conflict-free stores (0.905×), the interleaved pipeline and
      # W staged transposed (0.746×) lost and are gone. Leaving the barriers out of 2x4_4x2sk64g8u's
      # x·Wᵀ gained 40%: next, double buffering (one barrier per slice) of the two picks, K slices
      # and group sizes around them (VARIANT_CONFIGS replaces the list), and their stage costs.
      # Session 15: b tiles 0.34-0.59× of the picks (removed, as is the copy through subgroup matrices, 0.46-0.53×
      # again): the global loads are the stage that costs most (4x4_2x2sg8u without them 314-336
      # TFLOP/s, without its stores 214-223). K slices of 64 give each row's loads whole 128-byte lines:
      # the x·Wᵀ pick's tile with them, against the picks and their two-deep prefetch.
      # Session 16: sk64 on the 4x4 tile (0.773×), 4x4_2x2sk64g8 (0.838×) and 4x2_2x4sk64g8ul (0.831×) dropped;
      # the 256×128 tile of 8 warps (4x4_4x2: 85 FLOP a byte of L2 traffic against 64) was only measured before
      # the unrolled copy and grouped raster (session 5: 163 TFLOP/s, as the 128×128 tiles then): in u form now.
      # Session 17 (no GPU call): the picks with guard-free loads in interior tiles (`f`: no bounds test
      # between a slice's 16-byte loads, so the compiler may batch them; tests against float64 pass
      # with emulated subgroup matrices on lavapipe). When both picks gain > 3%, the rest of the call
      # runs with TUNELOOM_GEMM_GUARD_FREE=1 (rows carry forms_on).
      # Also a 64×128 tile of 4 warps (4x2_1x4sk64g8u) for the narrow k/v products (N = 512: 128
      # workgroups of 128×128 for 132 SMs; this tile gives 256), on the 1B k/v shape.
      # And K, lda, ldb as override constants (`c`, TcConfig.constStrides), alone and with `f`; and no
      # register prefetch (`n`: fewer registers, maybe two workgroups an SM; gemm-probes' occupancy rows).
      VCONFIGS=${VARIANT_CONFIGS:-4x4_2x2sg8u,4x4_2x2sg8uf,4x4_2x2sg8uc,4x4_2x2sg8un,4x2_2x4sk64g8u,4x2_2x4sk64g8uf,4x2_2x4sk64g8uc,4x2_2x4sk64g8ufc,4x2_2x4sk64g8un,4x4_4x2sg8u,4x2_1x4sk64g8u}
      [ "$(left)" -gt 40 ] && el variants && timeout $(( $(left) - 10 < 180 ? $(left) - 10 : 180 )) bun apps/cli/src/bench/gemm.ts --no-baselines --reps 2 \
        --configs $VCONFIGS \
        --shapes ${VARIANT_SHAPES:-4096x4096x4096,4096x8192x2048,4096x2048x8192,4096x512x2048} 2>/dev/null | grep '^{' | sed 's/^{/{"diag":true,/' | stamp >> $OUT/gemm.jsonl
      # What each stage of the two picks costs on 4096³ (results wrong by design).
      [ "$(left)" -gt 40 ] && timeout 50 bun apps/cli/src/bench/gemm.ts --no-baselines --reps 2 \
        --configs 4x4_2x2sk64g8u-no-loads,4x4_2x2sk64g8u-no-stores,4x4_2x2sg8u-no-loads,4x4_2x2sg8u-no-stores,4x2_2x4sk64g8u-no-loads,4x2_2x4sk64g8u-no-stores \
        --shapes 4096x4096x4096 2>/dev/null | grep '^{' | sed 's/^{/{"diag":true,/' | stamp >> $OUT/gemm.jsonl
      # Session 11, written after its last call: the two-deep prefetch (`…ul`, TcConfig.prefetch2). When it
      # beats its u forms by > 3% here (wrong results ignored), the sweep runs at once with it, so the
      # rest of the call trains on its table.
      NEW_TILES=4x4_2x2sk64g8u,4x2_1x4sk64g8u
      # Session 17's forms go on for the rest of the call only when both picks gain and their GPU tests
      # (every shape and edge of matmul-subgroup.test.ts, not just the bench's shapes) pass.
      gpu_tests_pass() { timeout 60 bun test --timeout 120000 -t "$1" kernels/test/matmul-subgroup.test.ts > /tmp/new-forms.txt 2>&1 && grep -q ' 0 fail' /tmp/new-forms.txt && ! grep -q '^ *0 pass' /tmp/new-forms.txt; }
      if [ "$(python3 scripts/variant-gain.py $OUT/gemm.jsonl u uf 4x4_2x2sg8 tB)" = yes ] && [ "$(python3 scripts/variant-gain.py $OUT/gemm.jsonl u uf 4x2_2x4sk64g8 dyW)" = yes ]; then
        if gpu_tests_pass 'sg8uf |sk64g8uf '; then
          el "guard-free loads ahead on both picks, tests pass: on for the rest of the call"
          export TUNELOOM_GEMM_GUARD_FREE=1; FORMS_ON="${FORMS_ON:+$FORMS_ON,}gemm_guard_free"
        else el "guard-free loads ahead but their GPU tests failed: stay off"; grep '^(fail)' /tmp/new-forms.txt | head -5; fi
      fi
      if [ "$(python3 scripts/variant-gain.py $OUT/gemm.jsonl u uc 4x4_2x2sg8 tB)" = yes ] && [ "$(python3 scripts/variant-gain.py $OUT/gemm.jsonl u uc 4x2_2x4sk64g8 dyW)" = yes ]; then
        if gpu_tests_pass 'sg8uc |sk64g8uc |sk64g8ufc '; then
          el "constant strides ahead on both picks, tests pass: on for the rest of the call"
          export TUNELOOM_GEMM_CONST_STRIDES=1; FORMS_ON="${FORMS_ON:+$FORMS_ON,}gemm_const_strides"
        else el "constant strides ahead but their GPU tests failed: stay off"; grep '^(fail)' /tmp/new-forms.txt | head -5; fi
      fi
      if [ "$(python3 scripts/variant-gain.py $OUT/gemm.jsonl u un 4x4_2x2sg8 tB)" = yes ] && [ "$(python3 scripts/variant-gain.py $OUT/gemm.jsonl u un 4x2_2x4sk64g8 dyW)" = yes ]; then
        if gpu_tests_pass 'sg8un |sk64g8un |sg8unfc '; then
          el "no prefetch ahead on both picks, tests pass: on for the rest of the call"
          export TUNELOOM_GEMM_NO_PREFETCH=1; FORMS_ON="${FORMS_ON:+$FORMS_ON,}gemm_no_prefetch"
        else el "no prefetch ahead but its GPU tests failed: stay off"; grep '^(fail)' /tmp/new-forms.txt | head -5; fi
      fi
      if [ "$(python3 scripts/variant-gain.py $OUT/gemm.jsonl u ul 4x4_2x2sg8,4x2_2x4sk64g8,4x2_2x4sg8)" = yes ]; then
        el "two-deep prefetch ahead: sweep with it"
        SWEEP_CONFIGS=4x4_2x2sk64g8,4x4_2x2sg8u,4x4_2x2sg8ul,4x2_2x4sk64g8u,4x2_2x4sk64g8ul,4x2_2x4sg8ul sweep
      # The new tiles against the table's picks, best of each per shape and form (median over the cases).
      elif [ "$(python3 scripts/variant-gain.py $OUT/gemm.jsonl --best $NEW_TILES 4x4_2x2sg8u,4x2_2x4sk64g8u,4x4_2x2sk64g8)" = yes ]; then
        el "new tiles ahead: sweep with the ones fastest somewhere"
        W=$(python3 scripts/variant-gain.py $OUT/gemm.jsonl --winners $NEW_TILES 4x4_2x2sg8u,4x2_2x4sk64g8u,4x4_2x2sk64g8)
        el "new tiles fastest somewhere: $W"
        SWEEP_CONFIGS=4x4_2x2sk64g8,4x4_2x2sg8u,4x2_2x4sk64g8u,$W sweep
      fi ;;
    *) echo "unknown step $step" ;;
  esac
done
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
  if 'tflops' in r and 'shape' in r: t[(r['shape'],r['transB'])][r['cfg']]=r['tflops']
cfgs=sorted({c for v in t.values() for c in v})
print('shape|tB|'+'|'.join(cfgs))
for k,v in t.items(): print(f"{k[0][:24]}|{int(k[1])}|"+'|'.join(str(v.get(c,'-')) for c in cfgs))
print('bad', [(r.get('cfg'),r.get('shape'),r.get('error','')[:100], r.get('relErr')) for r in rows if 'error' in r or (r.get('relErr') or 0)>1e-3][:5])
for r in rows:
  if r.get('op')=='mma_peak': print('mma_peak', r.get('variant'), r.get('tile'), r.get('tflops'), r.get('error','')[:200])
  if r.get('op')=='gemm_probe': print('gemm_probe', r.get('probe'), r.get('form'), r.get('gbs'), 'GB/s', r.get('ms'), 'ms', r.get('error','')[:200])
for r in rd('profile.jsonl'):
  if 'attn_diag' in r: print('attention', r['attn_diag'], r.get('op'), r.get('dtype'), round(r.get('ms') or 0, 4), 'ms', r.get('relErr')); continue
  p=r.get('profile',{}); print('profile', r.get('model'), 'full' if r.get('full') else '', 'A/B-off '+r['ab_off'] if r.get('ab_off') else '', 'A/B-on '+r['ab_on'] if r.get('ab_on') else '', r.get('tok_s'), r.get('step_ms'), p.get('gpu_ms'), p.get('by_kind'))
  for e in p.get('top',[])[:25]: print('  ', e)
for f in ['train.jsonl','decode.jsonl','multi-lora.jsonl','serve.jsonl']:
  for r in rd(f): print(f, {k:r[k] for k in r if k not in ('call','gpu','device','profile')})
PY
