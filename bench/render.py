"""Write the benchmarks' committed results (bench/results/*.json) into the marked sections of the docs, so no
measured figure is typed by hand.

    python bench/render.py            # rewrite every section whose result file exists
    python bench/render.py --check    # exit 1 if a section differs from what its result file renders

A section is the text between `<!-- bench:NAME:start ... -->` and `<!-- bench:NAME:end -->`; NAME is the result
file's stem (app_load, app_latency, ...). Each benchmark writes its file with `--json bench/results/NAME.json`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from s10.hardware import Cpu  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
KIND_NAMES = {"predict": "predict (top 3)", "explain": "explain, no maps", "explain+maps": "explain + 3 maps",
              "gallery": "mistakes gallery, 10 x 2 maps"}


def start(name: str) -> str:
    return f"<!-- bench:{name}:start (written by `python bench/render.py` from bench/results/{name}.json) -->"


def end(name: str) -> str:
    return f"<!-- bench:{name}:end -->"


def app_load(r: dict) -> list[str]:
    ratios = r["ratio_app_over_noop"]
    noop = {(x["users"], x["kind"]): x for x in r["runs"]["noop"]}
    lines = [f"`python bench/app_load.py --json bench/results/app_load.json` ({r['date']}; {r['machine']}; torch "
             f"{r['torch']}, gradio {r['gradio']}; the clients run on the same 2 cores as the server; "
             f"{r['seconds']:g} s per row" + (f"; maps: {r['maps']['method']} at `{r['maps']['layer']}`, the page's "
                                              "default" if "maps" in r else "") + "):", "",
             "| users | request | app req/s | app p50 | app p95 | no-op req/s | no-op p50 | app / no-op | errors "
             "(app / no-op) |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for a in r["runs"]["app"]:
        b = noop[(a["users"], a["kind"])]
        lines.append(f"| {a['users']} | {KIND_NAMES[a['kind']]} | {a['req_per_s']:.2f} | {a['p50_ms']:.0f} ms | "
                     f"{a['p95_ms']:.0f} ms | {b['req_per_s']:.2f} | {b['p50_ms']:.0f} ms | "
                     f"**{ratios[str(a['users'])][a['kind']]:.2f}x** | {a['errors']} / {b['errors']} |")
    soak = r.get("soak")
    if soak:
        first, half, last = soak["samples"][0], soak["samples"][len(soak["samples"]) // 2], soak["samples"][-1]
        lines += ["", f"**Soak**: {soak['requests']:,} mixed requests (every kind, random methods, layers, targets, k, "
                  f"opacity; the examples and 40 distinct uploads) from {soak['users']} users in {soak['seconds']:.0f} "
                  f"s, {soak['errors']} errors. Server RSS {first['rss_mb']:.0f} MB at the start, "
                  f"{half['rss_mb']:.0f} MB after {half['requests']:,} requests, {last['rss_mb']:.0f} MB after "
                  f"{last['requests']:,} ({soak['rss_growth_second_half_mb']:+.0f} MB over the second half); "
                  f"gradio cache {last['cache'][0]:,} files, {last['cache'][1]:.1f} MB at the end, with "
                  f"`S10_DELETE_CACHE={soak['delete_cache']}` (peak {max(s['cache'][0] for s in soak['samples']):,}"
                  " files)."]
    return lines


def app_latency(r: dict) -> list[str]:
    lines = [f"`python bench/app_latency.py --json bench/results/app_latency.json` ({r['date']}; in process, "
             f"{r['repeats']} repeats; {r['machine']}; torch {r['torch']}, {r['threads']} thread(s) as the app sets "
             "it):", "", "| request | p50 | p95 | goal |", "|---|---:|---:|---:|"]
    for row in r["rows"]:
        if "seconds" in row:
            lines.append(f"| {row['name']} | {row['seconds']:.1f} s | | under {row['goal_s']} s |")
        else:
            goal = f"under {row['goal_ms']:g} ms" if row.get("goal_ms") else ""
            lines.append(f"| {row['name']} | {row['p50_ms']:.1f} ms | {row['p95_ms']:.1f} ms | {goal} |")
    return lines


def cam_faithfulness(r: dict) -> list[str]:
    rows, choice, rule = r["rows"], r["choice"] or {}, r["rule"]
    floor = {int(k): v for k, v in r["random_gap"].items()}
    lines = ["`python bench/cam_faithfulness.py --data .data/cifar10 --json bench/results/cam_faithfulness.json` "
             f"({r['date']}; {r['images']} seeded test images, the released weights; {r['machine']}; torch "
             f"{r['torch']}, {r['threads']} threads). Deletion and insertion AUC ({r['steps']} steps, the predicted "
             "class's probability) and their gap (insertion - deletion, higher is better); r 2nd / r last: the "
             "correlation of the predicted class's map with the second / the least likely class's (lower means the "
             "map depends on the class; flat: all-zero maps left out); average drop / increase in confidence; "
             "3 maps' latency, p50. **Bold**: the default.", "",
             "| method | layer | map | deletion | insertion | gap | r 2nd | r last | flat | avg drop | increase | "
             "3 maps | qualifies |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for c in rows:
        cells = [c["method"], f"`{c['layer']}`", f"{c['side']}x{c['side']}", f"{c['deletion']:.3f}",
                 f"{c['insertion']:.3f}", f"{c['gap']:+.3f}", f"{c['r_second']:+.2f}", f"{c['r_last']:+.2f}",
                 f"{c['flat_second']}/{c['flat_last']}", f"{c['drop']:.3f}", f"{c['increase']:.3f}",
                 f"{c['ms']:.0f} ms", "yes" if c["qualifies"] else ""]  # the benchmark's verdict
        if (c["method"], c["layer"]) == (choice.get("method"), choice.get("layer")):
            cells = [f"**{x}**" if x else x for x in cells]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "A random map's gap (the floor): " + ", ".join(f"{k}x{k} {v:+.3f}" for k, v in sorted(floor.items()))
              + ". ScoreCAM, latency only: " + ", ".join(f"`{k}` {v:.0f} ms" for k, v in r["scorecam_ms"].items())
              + ".", "",
              f"The rule: a method and layer qualify when their 3 maps take under {rule['latency_budget_ms']:g} ms, "
              f"the maps of two classes correlate at most {rule['max_corr']:g} (second and last class both), at most "
              f"{100 * rule['max_flat']:.0f} % of them are all zero, and the gap beats a random map's; the default "
              "is the qualifying pair with the largest gap (within "
              f"{rule['tie_gap']:g} of it, the finer map). Offered (qualify at some layer): "
              f"**{', '.join(r['offered'])}**; default: **{choice.get('method')} at `{choice.get('layer')}`**."]
    return lines


def train_throughput(r: dict) -> list[str]:
    lines = [f"`python bench/train_throughput.py --data .data/cifar10 --steps {r['steps']} --rounds {r['rounds']} "
             f"--json bench/results/train_throughput.json` ({r['date']}; {r['machine']}; clock measured "
             f"{r['ghz_measured']:.2f} GHz all-core, /proc/cpuinfo says {r['ghz_cpuinfo']:.2f}; torch {r['torch']}, "
             f"{r['threads']} threads, batch {r['batch']}, median of {r['rounds']} rounds of {r['steps']} steps). One "
             f"S10 training image costs {r['gflop_per_image']:.2f} GFLOP (forward + backward, counted by "
             "`torch.utils.flop_counter`).", "",
             "| precision | ours (images/s) | plain DataLoader loop (images/s) | ratio | achieved | fraction of peak |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        peak = (f"{100 * row['achieved_tflops'] / row['peak_tflops']:.0f} % of {row['peak_tflops']:.2f}"
                if row["peak_tflops"] else "peak unknown")
        lines.append(f"| {row['precision']} | {row['ours']:.1f} | {row['baseline']:.1f} | {row['ratio']:.2f} | "
                     f"{row['achieved_tflops']:.3f} TFLOP/s | {peak} |")
    lines += ["", "The peak: " + "; ".join(f"{row['precision']}: {row['peak_rule']}" for row in r["rows"]) + "."]
    if r.get("bf16_speedup"):
        lines += ["", f"bf16-mixed runs **{r['bf16_speedup']:.2f}x** as fast as 32-true here."]
    return lines


def compile_speed(r: dict) -> list[str]:
    first = r["machines"][0]
    lines = [f"`python bench/compile_speed.py --data .data/cifar10 --precision 32-true bf16-mixed --steps "
             f"{first['steps']} --rounds {first['rounds']} --json bench/results/compile_speed.json`: one row per "
             "machine and precision (the newest run of each machine), batch 512, the median of the rounds, the two "
             "loops alternating in one process.", "",
             "| machine | date | precision | eager (images/s) | compiled (images/s) | compiled / eager | "
             "first compiled steps | loss error, eager / compiled | median gradient error, eager / compiled |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for m in r["machines"]:
        for row in m["rows"]:
            e, c = row["errors_vs_float64"]["eager"], row["errors_vs_float64"]["compiled"]
            lines.append(f"| {m['machine']}; torch {m['torch']}, {m['threads']} threads | {m['date']} | "
                         f"{row['precision']} | {row['eager']:.1f} | {row['compiled']:.1f} | **{row['ratio']:.2f}x** | "
                         f"{row['compile_s']:.0f} s | {e['loss']:.0e} / {c['loss']:.0e} | "
                         f"{e['grad_median']:.0e} / {c['grad_median']:.0e} |")
    lines += ["", "Errors: relative to the same step in float64 on one training batch (the norm of the difference "
              "over the norm of the float64 value); a compiled error of the order of eager's is "
              "rounding (bf16's, in bf16-mixed), far above it a wrong kernel."]
    return lines


def ghost_batch(r: dict) -> list[str]:
    t, e = r["step_s"], r["grad_error_vs_float64"]
    ours, baseline = t["ours"] - t["plain"], t["op by op"] - t["plain"]
    return [f"`python bench/ghost_batch.py --steps {r['steps']} --rounds {r['rounds']} --json "
            f"bench/results/ghost_batch.json` ({r['date']}; {r['machine']}; torch {r['torch']}, {r['threads']} "
            f"threads; {r['precision']}, batch {r['batch']}, groups of {r['group']}; the median of the rounds, the "
            "variants alternating in one process):", "",
            "| batch norm | seconds a training step | against plain | median gradient error against float64 |",
            "|---|---:|---:|---:|",
            f"| plain | {t['plain']:.3f} | 1.00x | |",
            f"| ghost, ours (one fused call on the regrouped batch) | {t['ours']:.3f} | {t['ours'] / t['plain']:.2f}x | "
            f"{e['ours']:.0e} |",
            f"| ghost, op by op in float32 | {t['op by op']:.3f} | {t['op by op'] / t['plain']:.2f}x | "
            f"{e['op by op']:.0e} |", "",
            f"Ghost batch norm's own cost: **{ours:.2f} s** a step ours, {baseline:.2f} s op by op "
            f"(**{baseline / ours:.1f}x** ours). The gradient errors: one step's, each parameter's against the "
            "same step in float64, the median over the parameters."]


def train_precision_by_cpu(r: dict) -> list[str]:
    lines = [f"`{r['command']}`: our training loop's images/s in each precision, one row per CPU kind (the newest "
             "run of each), and the precision the trainer picks there by default.", "",
             "| CPU | vendor, family | flags | 32-true (images/s) | bf16-mixed (images/s) | bf16-mixed / 32-true "
             "| default | date |", "|---|---|---|---:|---:|---:|---|---|"]
    for c in r["cpus"]:
        fast, rates = Cpu.from_row(c).fast_bf16, c["images_per_s"]
        lines.append(f"| {c['name']} | {c['vendor']}, {c['family']} | {' '.join(c['flags'])} | {rates['32-true']:.1f} "
                     f"| {rates['bf16-mixed']:.1f} | {rates['bf16-mixed'] / rates['32-true']:.2f}x "
                     f"| {'bf16-mixed' if fast else '32-true'} | {c['date']} |")
    return lines


# What each out-of-distribution score measures (s10/ood.py's MEASURES says it to the page's visitors).
MEASURES = {"msp": "the model's top calibrated probability", "energy": "how strongly the model answers at all (the "
            "energy of its logits: low for every class alike)", "mahalanobis": "how far a picture's penultimate "
            "features lie from the nearest class's training features", "knn": "how far a picture's penultimate "
            "features lie from the nearest training pictures'"}


def ood(r: dict) -> list[str]:
    kinds, held = r["kinds"], r["held_out"]
    names = {"msp": "max softmax (the low-confidence hint)", "energy": "energy", "mahalanobis": "Mahalanobis",
             "knn": "k-NN, all training images (k = 10)", "knn-2k": "k-NN, 2,000 training images (k = 1)"}
    sources = r.get("sources", {})

    def header(kind):  # the kind, and its sample: pictures, and the distinct source pictures they come from
        n, distinct = r["per_kind"], sources.get(kind)
        size = f"{n} crops of {distinct} photographs" if kind == held and distinct else f"{n} pictures"
        return f"*{kind}* ({size})" if kind == held else f"{kind} ({size})"

    reference = r.get("reference", "CIFAR-10 test images")
    lines = [f"`python bench/ood.py --data .data/cifar10 --json bench/results/ood.json` ({r['date']}; the released "
             f"weights; {r['machine']}; torch {r['torch']}). Max softmax and energy read the logits (at the model's "
             f"temperature); Mahalanobis and k-NN are fitted on the {r['train_images']:,} training images' "
             f"penultimate features. All are measured against the {r['test_images']:,} {reference}: AUROC / "
             f"FPR95 (the share of pictures let through at the threshold that keeps {100 * r['keep']:.0f} % of those "
             f"test images). Each generated picture is drawn at {r['drawn']}x{r['drawn']} and shrunk to 32x32 the way an upload "
             f"is; *{held}* is held out (no choice was made on it).", "",
             "| score | " + " | ".join(header(k) for k in kinds)
             + " | mean AUROC, generated kinds | statistics |", "|---|" + "---:|" * (len(kinds) + 2)]
    for row in r["rows"]:
        cells = [f"{row['kinds'][k]['auroc']:.3f} / {row['kinds'][k]['fpr95']:.2f}" for k in kinds]
        name = names.get(row["score"], row["score"])
        line = [name, *cells, f"{row['tuned_auroc']:.3f}", f"{row['stats_mb']:.1f} MB"]
        if row["score"] == r["choice"]["score"]:
            line = [f"**{x}**" for x in line]
        lines.append("| " + " | ".join(line) + " |")
    lines += ["", f"Shipped: **{names.get(r['choice']['score'], r['choice']['score'])}**, the best mean AUROC over "
              f"the generated kinds among scores whose statistics stay under {r['ship_limit_mb']:g} MB; threshold "
              f"{r['choice']['threshold']:.4g}. What it measures is {MEASURES[r['choice']['score'].split('-')[0]]}, "
              "not what the picture shows: it fires on photos of the ten classes too when they are unlike "
              "CIFAR-10's. How often it fires on "
              f"{r['upload_images']:,} CIFAR-10 test images sent the way an upload may reach the network:", "",
              f"| CIFAR-10 test images ({r['upload_images']:,} each) | fires |", "|---|---:|"]
    lines += [f"| {name} | {100 * share:.1f} % |" for name, share in r["uploads"].items()]
    return lines


def weight_average(r: dict) -> list[str]:
    rec = r["recipe"]
    lines = [f"`python bench/weight_average.py RUN --json bench/results/weight_average.json` ({r['date']}; "
             f"{r['machine']}; torch {r['torch']}): one run of seed {rec['seed']}, {rec['epochs']} epochs, "
             f"peak LR {rec['max_lr']:.3g}, label smoothing {rec['label_smoothing']:g}"
             f"{', alternating flip' if rec['alternating_flip'] else ''}, {r['precision']}, with the average "
             f"{rec['ema_decay']:g} every {rec['ema_every']} steps; the average only observes the training, so both "
             "rows are the same trajectory. Training set: its "
             f"{r['train_images']:,} images un-augmented, cross-entropy without smoothing.", "",
             "| weights | training loss | training accuracy | test accuracy (not used to choose) |",
             "|---|---:|---:|---:|"]
    for name, row in r["train"].items():
        lines.append(f"| {name} | {row['loss']:.4f} | {100 * row['acc']:.2f} % | {100 * r['test_acc'][name]:.2f} % |")
    return lines + ["", "The test column, copied from the run's record: the last weights' is the last epoch's test "
                    f"pass under the run's {r['precision']} autocast (metrics.csv), the average's the final "
                    "evaluation of the published weights in float32 (results.json)."]


RENDERERS = {"train_throughput": train_throughput, "train_precision_by_cpu": train_precision_by_cpu,
             "compile_speed": compile_speed, "ghost_batch": ghost_batch,
             "app_load": app_load, "app_latency": app_latency, "cam_faithfulness": cam_faithfulness, "ood": ood,
             "weight_average": weight_average}


def render(name: str) -> str:
    data = json.loads((RESULTS / f"{name}.json").read_text())
    return "\n".join(RENDERERS[name](data)) + "\n"


def sections(text: str) -> list[str]:
    return re.findall(r"<!-- bench:([a-z_]+):start", text)


def rewrite(text: str) -> str:
    for name in sections(text):
        if not (RESULTS / f"{name}.json").is_file():
            continue
        head, rest = text.split(start(name), 1)
        _, tail = rest.split(end(name), 1)
        text = f"{head}{start(name)}\n{render(name)}{end(name)}{tail}"
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
    args = parser.parse_args(argv)
    stale = []
    for path in DOCS:
        text = path.read_text()
        new = rewrite(text)
        if new != text:
            stale.append(path)
            if not args.check:
                path.write_text(new)
    for path in stale:
        print(f"{'differs' if args.check else 'rewrote'}: {path.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
