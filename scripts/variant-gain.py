"""Prints yes when a tile variant beats its base form in a device call's variants step: the
geometric mean of tflops(cfg + NEW) / tflops(cfg + BASE) over the shapes and forms measured for
the CFGS named (comma-separated), above 1.03.
FORM (optional): tB to count only x·Wᵀ rows (transB), dyW only dy·W rows.
Usage: python3 scripts/variant-gain.py gemm.jsonl BASE NEW CFGS [FORM]
  unrolled copy:        variant-gain.py gemm.jsonl "" u 4x4_2x2sk64g8,4x4_2x2sg8
  double buffering:     variant-gain.py gemm.jsonl sg8u sdg8u 4x4_2x2 tB
Or, with --best NEWCFGS OLDCFGS: yes when the best of the NEW configurations beats the best of the
OLD ones per (shape, form) by the same margin, in the median over the cases (new tiles against the
table's picks; a median, as one slow repetition of a pick once made every new tile look ahead).
  variant-gain.py gemm.jsonl --best 4x2_4x4sg8u,2x4_4x4sg8u 4x4_2x2sg8u,4x2_2x4sk64g8u
With --winners NEWCFGS OLDCFGS: prints the NEW configurations that are fastest of all (NEW and OLD)
on at least one (shape, form), comma-separated (what a sweep should add to the OLD ones).
  variant-gain.py gemm.jsonl --winners 4x2_4x4sg8u,2x4_4x4sg8u 4x4_2x2sg8u,4x2_2x4sk64g8u"""
import json, math, sys

path = sys.argv[1]
best_mode = sys.argv[2] in ("--best", "--winners")
winners_mode = sys.argv[2] == "--winners"
if best_mode:
    news, olds = sys.argv[3].split(","), sys.argv[4].split(",")
    base = new = ""
    cfgs = []
else:
    base, new, cfgs = sys.argv[2], sys.argv[3], sys.argv[4].split(",")
form = sys.argv[5] if len(sys.argv) > 5 else ""
best = {}
try:
    lines = open(path).readlines()
except OSError:  # the variants step measured nothing (skipped near the deadline)
    lines = []
for line in lines:
    try:
        r = json.loads(line)
    except ValueError:
        continue
    if form and bool(r.get("transB")) != (form == "tB"):
        continue
    if r.get("tflops") and r.get("cfg") and r.get("shape") and not r.get("error") and (r.get("relErr") or 0) < 1e-3:
        key = (r["cfg"], r["shape"], r["transB"])
        best[key] = max(best.get(key, 0), r["tflops"])
if best_mode:
    top = lambda names, s, t: max((best.get((c, s, t), 0) for c in names), default=0)
    cases = {(s, t) for (_, s, t) in best}
    ratios = [top(news, s, t) / top(olds, s, t) for s, t in cases if top(news, s, t) and top(olds, s, t)]
    if winners_mode:
        wins = {max(news + olds, key=lambda c: best.get((c, s, t), 0)) for s, t in cases}
        print(",".join(c for c in news if c in wins))
        sys.exit(0)
    new, base = "+".join(news), "+".join(olds)
else:
    ratios = [best[(c + new, s, t)] / v for (c0, s, t), v in best.items() for c in cfgs
              if c0 == c + base and (c + new, s, t) in best]
if best_mode and ratios:
    # The median: one repetition of a pick at a quarter of its speed (session 13, 4096³) must not
    # make every new tile look ahead.
    r = sorted(ratios)
    gain = r[len(r) // 2] if len(r) % 2 else (r[len(r) // 2 - 1] + r[len(r) // 2]) / 2
else:
    gain = math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else 0
print("yes" if gain > 1.03 else "no", file=sys.stdout)
print(f"{new} over {base or 'plain'} gain {gain:.3f} over {len(ratios)} measurements", file=sys.stderr)
