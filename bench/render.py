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
             f"{r['seconds']:g} s per row):", "",
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
    rows, choice = r["rows"], r["choice"]
    layers = list(dict.fromkeys(row["layer"] for row in rows))  # the model's order
    rule = r["rule"]
    lines = ["`python bench/cam_faithfulness.py --data .data/cifar10 --json bench/results/cam_faithfulness.json` "
             f"({r['date']}; {r['images']} seeded test images, the released weights; {r['machine']}; torch "
             f"{r['torch']}, {r['threads']} threads): average drop (lower is better) / increase in confidence (higher "
             "is better) / 3 maps' latency, p50.", "",
             "| method | " + " | ".join(f"`{layer}` ({r['sides'][layer]}x{r['sides'][layer]})" for layer in layers)
             + " |", "|---|" + "---:|" * len(layers)]
    for method in dict.fromkeys(row["method"] for row in rows):
        cells = [next(x for x in rows if x["method"] == method and x["layer"] == layer) for layer in layers]
        text = [("**{}**" if (c["method"], c["layer"]) == (choice["method"], choice["layer"]) else "{}").format(
            f"{c['drop']:.3f} / {c['increase']:.3f} / {c['ms']:.0f} ms") for c in cells]
        lines.append(f"| {method} | " + " | ".join(text) + " |")
    lines.append("| ScoreCAM (latency only) | " + " | ".join(f"{r['scorecam_ms'][layer]:.0f} ms" for layer in layers)
                 + " |")
    lines += ["", f"The rule: among maps of at least {rule['min_map_side']}x{rule['min_map_side']} whose 3 maps take "
              f"under {rule['latency_budget_ms']:g} ms, the lowest average drop (within {rule['tie_drop']:g} of it, "
              f"the higher increase in confidence): **{choice['method']} at `{choice['layer']}`**."]
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


RENDERERS = {"train_throughput": train_throughput, "app_load": app_load, "app_latency": app_latency,
             "cam_faithfulness": cam_faithfulness}


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
