"""Print one line per collapse run (the *.json beside this file) and its curve: python3 summary.py"""
import glob
import json
import os
for f in sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "*.json"))):
    r = json.load(open(f))
    if r.get("name") == "ct64" and r["iterations_target"] == 20:
        continue
    fl, real = r["floor"]["quality_score"], r["real"]
    print(f"== {r['name']}  overrides: {' '.join(r['overrides'][3:]) or '(paper recipe)'}  floor={fl:.2f} "
          f"real lung sd={real['lung_fraction_sd']:.3f}  done={r['done']}"
          + (f" iters={r['iterations']} train_s={r['train_s']:.0f} cpu_s={r['cpu_s']:.0f} wall_s={r['total_s']:.0f}"
             if r["done"] else ""))
    for c in r["curve"]:
        ema = f" (G: div {c['g_diversity_ratio']:.2f} q/f {c['g_quality_vs_floor']:.2f})" if "g_diversity_ratio" in c else ""
        print(f"  it {c['iteration']:>5} cpu_s {c['cpu_s']:>5.0f} div {c['diversity_ratio']:.2f} q {c['quality_score']:6.2f} "
              f"q/floor {c['quality_vs_floor']:5.2f} lung_sd {c['lung_fraction_sd']:.3f} shift {c['intensity_shift_hu']:+.0f} "
              f"dup {c['dup_ratio']:.2f} d_loss {c.get('d_loss', float('nan')):.2f}{ema}")
