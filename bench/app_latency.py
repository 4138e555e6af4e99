"""App latency on this CPU, in process: p50 and p95 of each request kind, against bare-model baselines measured in
the same process.

    python bench/app_latency.py [--model release/model] [--repeats 30] [--json bench/results/app_latency.json]

The app's functions are called as the server calls them, with its thread setting (S10_THREADS); what a visitor waits
for over HTTP is bench/app_load.py's. The figures: docs/app.md, written by bench/render.py.

Goals on a 2-core CPU (p50): predict < 10 ms; predict + 3 maps with the default method and layer, overlays included,
< 40 ms; the 10-image misclassified gallery explained both ways (20 maps) < 150 ms; a 12-MP upload < 200 ms; start
to first answer with the Hub unreachable < 10 s. Each CAM method is timed at the default and at the earliest layer,
and a request for one chosen class.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def timings(fn, repeats: int) -> np.ndarray:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return np.array(out)


ROWS: list[dict] = []  # what --json writes: one row per measurement


def report(name: str, ms: np.ndarray, goal: float | None = None, baseline: np.ndarray | None = None) -> None:
    ROWS.append({"name": name, "p50_ms": round(float(np.percentile(ms, 50)), 1),
                 "p95_ms": round(float(np.percentile(ms, 95)), 1), "goal_ms": goal})
    line = f"{name:<44} p50 {np.percentile(ms, 50):7.1f} ms   p95 {np.percentile(ms, 95):7.1f} ms"
    if baseline is not None:
        line += f"   x{np.percentile(ms, 50) / np.percentile(baseline, 50):.2f} of baseline"
    if goal is not None:
        line += f"   (goal p50 < {goal:g} ms: {'met' if np.percentile(ms, 50) < goal else 'MISSED'})"
    print(line)


def photo(path: Path, width=4000, height=3000) -> Path:
    """A 12-megapixel JPEG with photo-like content (smooth shapes plus sensor noise)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([128 + 100 * np.sin(x / 300), 128 + 100 * np.cos(y / 250), 128 + 80 * np.sin((x + y) / 400)], -1)
    img += rng.normal(0, 12, img.shape)
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def startup_seconds(model: str, offline: bool = True) -> float:
    """Process start to the first answered prediction, through the real server. With offline=False the Hub is not
    declared offline, so the app must find out that it cannot be reached (no network here) before it falls back."""
    from gradio_client import Client, handle_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "S10_MODEL": model, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    env["HF_HUB_OFFLINE"] = "1" if offline else "0"
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "space" / "app.py")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                if proc.poll() is not None or time.perf_counter() - t > 120:
                    raise RuntimeError("the app did not start")
                time.sleep(0.05)
        client.predict(handle_file(str(ROOT / "space" / "examples" / "cat.png")), 3, api_name="/predict")
        return time.perf_counter() - t
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "release" / "model"))
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--json", type=Path, help="write the results here (bench/results/app_latency.json)")
    args = p.parse_args()
    os.environ["S10_MODEL"] = args.model
    spec = importlib.util.spec_from_file_location("app", ROOT / "space" / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    from torchcam.methods import GradCAM

    examples = [str(x) for x in app.EXAMPLES]
    threads = torch.get_num_threads()  # as the app sets it (S10_THREADS)
    print(f"torch {torch.__version__}, {threads} threads, model {args.model}")

    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        bare = timings(lambda: app.MODEL(x), args.repeats)
    report("baseline: bare forward pass (1 image)", bare)

    def torchcam_plain():  # the straightforward way: one extractor, one backward per class
        model = app.CAM_MODEL
        xg = x.clone().requires_grad_(True)
        with torch.enable_grad(), GradCAM(model, target_layer="prep") as extractor:
            scores = model(xg)
            for i, c in enumerate(scores.topk(3).indices[0].tolist()):
                extractor(c, scores, retain_graph=i < 2)
    plain_cam = timings(torchcam_plain, args.repeats)
    report("baseline: torchcam GradCAM x3 at prep", plain_cam)

    i = iter(range(10**9))

    def example():
        return examples[next(i) % len(examples)]

    predict = timings(lambda: app.predict(example(), 3), args.repeats)
    report("predict (example image, top 3)", predict, 10, bare)
    default, first = app.LAYER, app.CONFIG.cam_layers[0]
    for method in app.CAM_METHODS:
        for layer in dict.fromkeys([default, first]):
            is_default = method == app.DEFAULT_METHOD and layer == default
            ms = timings(lambda: app.explain(example(), 3, True, 3, layer, 0.5, method), args.repeats)
            report(f"predict + 3 {method} maps at {layer}" + (" (default)" if is_default else ""), ms,
                   40 if is_default else None, plain_cam if layer == "prep" and method == "GradCAM" else None)
    chosen = timings(lambda: app.explain(example(), 3, True, 3, default, 0.5, app.DEFAULT_METHOD, app.CLASSES[-1]),
                     args.repeats)
    report("predict + the map for one chosen class", chosen)
    if app.PACK:
        gallery = timings(lambda: app.misclassified(10, True, default, 0.5), max(5, args.repeats // 3))
        report("misclassified gallery, 10 images x 2 maps", gallery, 150)
    big = photo(Path("/tmp/s10-bench-12mp.jpg"))
    upload = timings(lambda: app.predict(str(big), 3), max(5, args.repeats // 2))
    report("predict on a 12-MP JPEG upload", upload, 200)
    repo = json.loads((ROOT / "project.json").read_text())["model_repo"]
    for name, model, offline in (("model folder", args.model, True), (f"{repo}, Hub unreachable", repo, False)):
        seconds = startup_seconds(model, offline)
        ROWS.append({"name": f"start to first answer, {name}", "seconds": round(seconds, 1), "goal_s": 10})
        print(f"{'start to first answer, ' + name:<44} {seconds:.1f} s   (goal < 10 s: "
              f"{'met' if seconds < 10 else 'MISSED'})")
    if args.json:
        from s10 import hardware

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": hardware.cpu().describe(), "torch": torch.__version__,
                                         "threads": threads, "date": time.strftime("%Y-%m-%d"),
                                         "repeats": args.repeats, "rows": ROWS}, indent=1) + "\n")
        print(f"wrote {args.json}")

if __name__ == "__main__":
    main()
