"""Prints yes when the unrolled staged copy (config suffix u) beats the table's plain picks in a
device call's variants step: the geometric mean of tflops(cfg + "u") / tflops(cfg) over the
shapes and forms measured for 4x4_2x2sk64g8 and 4x4_2x2sg8 (the table's x·Wᵀ and dy·W picks)
is above 1.03. Usage: python3 scripts/unrolled-gain.py gemm.jsonl"""
import json, math, sys

best = {}
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    if r.get("tflops") and r.get("cfg") and r.get("shape"):
        key = (r["cfg"], r["shape"], r["transB"])
        best[key] = max(best.get(key, 0), r["tflops"])
ratios = [best[(c + "u", s, t)] / v for (c, s, t), v in best.items()
          if c in ("4x4_2x2sk64g8", "4x4_2x2sg8") and (c + "u", s, t) in best]
gain = math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else 0
print("yes" if gain > 1.03 else "no", file=sys.stdout)
print(f"unrolled gain {gain:.3f} over {len(ratios)} measurements", file=sys.stderr)
