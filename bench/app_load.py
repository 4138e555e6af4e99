"""The app as visitors meet it: real HTTP on loopback through gradio_client, several users at once, against a no-op
Gradio app with the same inputs and outputs (the transport's own cost), then a soak for memory and cache growth.

    python bench/app_load.py [--model release/model] [--users 1 4 8 16] [--seconds 8] [--soak 2000]
                             [--json bench/results/app_load.json]

For each user count and request kind (predict; explain without maps; explain with 3 maps, the default method and
layer; the 10-image mistakes gallery explained both ways), `users` clients, each in its own thread with its own
gradio_client.Client, send requests back to back for `--seconds`: upload the picture, queue, wait for the answer,
download every returned picture (as a browser does) and decode it. Latency is what a client waits for all of that.
The same runs go to `bench/noop_app.py` (PNG pictures made once, encoded by gradio on every request): app req/s
over no-op req/s is the ratio reported. The soak sends `--soak` mixed requests (every kind, random methods, layers,
targets, k, opacity; the examples and 40 distinct uploads) from 8 users and samples the server's RSS and the
gradio cache (files and bytes) after each tenth. The clients share the server's 2 cores: both apps pay that alike.
docs/app.md's served section is written from the JSON by bench/render.py.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from s10 import hardware  # noqa: E402
from s10.cam import DEFAULT_LAYER, DEFAULT_METHOD  # noqa: E402  (what the page opens with)

EXAMPLES = sorted((ROOT / "space" / "examples").glob("*.png"))
KINDS = ["predict", "explain", "explain+maps", "gallery"]


class Server:
    """An app script served in a subprocess on a free port (the tests' real-server helper), with a gradio cache folder
    of its own."""

    def __init__(self, script: Path, model: str, delete_cache: str | None = None):
        from tests.conftest import App

        self.cache = Path(tempfile.mkdtemp(prefix="s10-load-cache-"))
        env = {"S10_MODEL": model, "GRADIO_TEMP_DIR": str(self.cache)}
        if delete_cache:
            env["S10_DELETE_CACHE"] = delete_cache
        self.app = App(script, env=env, cwd=ROOT)
        self.proc = self.app.proc

    def client(self):
        return self.app.client()

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cache_size(self) -> tuple[int, float]:
        """Files and MB in the server's gradio cache (files deleted meanwhile are skipped)."""
        count, size = 0, 0
        for path in self.cache.rglob("*"):
            try:
                if path.is_file():
                    size += path.stat().st_size
                    count += 1
            except FileNotFoundError:
                pass
        return count, size / 1e6

    def stop(self):
        self.app.stop()
        shutil.rmtree(self.cache, ignore_errors=True)


def pictures(result) -> list[str]:
    """The local paths of every picture in an answer (gradio_client has downloaded them)."""
    found = []

    def walk(value):
        if isinstance(value, str) and Path(value).suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
            found.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(result)
    return found


def request(client, kind: str, picture: str, options: dict | None = None):
    """One request of `kind`, as the page's API takes it; every returned picture is decoded."""
    from gradio_client import handle_file

    o = {"k": 3, "n_cams": 3, "layer": DEFAULT_LAYER, "opacity": 0.5, "method": DEFAULT_METHOD,
         "target": "top classes", "count": 10, **(options or {})}
    if kind == "predict":
        result = client.predict(handle_file(picture), o["k"], api_name="/predict")
    elif kind in ("explain", "explain+maps"):
        result = client.predict(handle_file(picture), o["k"], kind == "explain+maps", o["n_cams"], o["layer"],
                                o["opacity"], o["method"], o["target"], api_name="/explain")
    else:
        result = client.predict(o["count"], True, o["layer"], o["opacity"], o["method"], api_name="/misclassified")
    for path in pictures(result):
        with Image.open(path) as im:
            im.load()
    return result


def load(server: Server, kind: str, users: int, seconds: float) -> dict:
    """`users` clients sending `kind` back to back for `seconds`: req/s, latency p50/p95 (ms), errors."""
    clients = [server.client() for _ in range(users)]
    latencies, errors = [], []
    lock = threading.Lock()
    start = time.perf_counter()
    stop = start + seconds

    def user(n: int):
        i = n
        while time.perf_counter() < stop:
            t = time.perf_counter()
            try:
                request(clients[n], kind, str(EXAMPLES[i % len(EXAMPLES)]))
                with lock:
                    latencies.append(time.perf_counter() - t)
            except Exception as err:  # counted, and the first few kept for the report
                with lock:
                    errors.append(f"{type(err).__name__}: {str(err)[:200]}")
            i += users

    with ThreadPoolExecutor(users) as pool:
        list(pool.map(user, range(users)))
    elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"kind": kind, "users": users, "requests": len(latencies), "errors": len(errors),
            "error_samples": errors[:3], "req_per_s": round(len(latencies) / elapsed, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1)}


def soak(server: Server, total: int, users: int, uploads: list[str], seed: int = 0) -> dict:
    """`total` mixed requests from `users` clients; the server's RSS and cache after every tenth."""
    from s10.cam import CAM_METHODS
    from s10.model import CAM_LAYERS, CIFAR10_CLASSES

    rng = random.Random(seed)
    jobs = []
    for _ in range(total):
        kind = rng.choice(KINDS)
        picture = str(rng.choice(EXAMPLES)) if rng.random() < 0.5 else rng.choice(uploads)
        options = {"k": rng.randint(1, 10), "n_cams": rng.randint(1, 10), "layer": rng.choice(CAM_LAYERS),
                   "opacity": rng.choice([0, 0.3, 0.5, 1]), "method": rng.choice(list(CAM_METHODS)),
                   "target": rng.choice(["top classes", *CIFAR10_CLASSES]), "count": rng.choice([1, 2, 10])}
        jobs.append((kind, picture, options))
    clients = [server.client() for _ in range(users)]
    samples = [{"requests": 0, "rss_mb": round(server.rss_mb(), 1), "cache": server.cache_size()}]
    errors = []
    done = 0
    lock = threading.Lock()
    step = max(1, total // 10)

    def user(n: int):
        nonlocal done
        for kind, picture, options in jobs[n::users]:
            try:
                request(clients[n], kind, picture, options)
            except Exception as err:
                with lock:
                    errors.append(f"{kind} {options}: {type(err).__name__}: {str(err)[:200]}")
            with lock:
                done += 1
                if done % step == 0:
                    files, mb = server.cache_size()
                    samples.append({"requests": done, "rss_mb": round(server.rss_mb(), 1),
                                    "cache": [files, round(mb, 2)]})
                    print(f"soak: after {done:>5} requests  RSS {samples[-1]['rss_mb']:7.1f} MB   cache "
                          f"{files:>5} files {mb:6.2f} MB   errors {len(errors)}", flush=True)

    t = time.perf_counter()
    with ThreadPoolExecutor(users) as pool:
        list(pool.map(user, range(users)))
    half = min(samples, key=lambda s: abs(s["requests"] - total // 2))
    return {"requests": total, "users": users, "seconds": round(time.perf_counter() - t, 1), "errors": len(errors),
            "error_samples": errors[:5], "samples": samples,
            "rss_growth_second_half_mb": round(samples[-1]["rss_mb"] - half["rss_mb"], 1)}


def distinct_uploads(folder: Path, n: int = 40) -> list[str]:
    """n different photo-sized JPEGs (each upload is a new file to the server)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).resize((640, 480))
        paths.append(str(folder / f"upload-{i}.jpg"))
        img.save(paths[-1], quality=85)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "release" / "model"))
    p.add_argument("--users", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--kinds", nargs="+", default=KINDS, choices=KINDS)
    p.add_argument("--seconds", type=float, default=8.0, help="per user count and kind")
    p.add_argument("--soak", type=int, default=2000, help="mixed requests from 8 users (0: none)")
    p.add_argument("--delete-cache", default="20,30", help="the app's S10_DELETE_CACHE during the soak")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()
    import gradio
    import torch

    out = {"machine": hardware.cpu().describe(), "torch": torch.__version__, "gradio": gradio.__version__,
           "date": time.strftime("%Y-%m-%d"), "seconds": args.seconds,
           "maps": {"method": DEFAULT_METHOD, "layer": DEFAULT_LAYER}, "runs": {}}
    print(f"{out['machine']}; torch {out['torch']}, gradio {out['gradio']}; {args.seconds:g} s per run")
    for name, script in (("noop", ROOT / "bench" / "noop_app.py"), ("app", ROOT / "space" / "app.py")):
        server = Server(script, args.model)
        try:
            request(server.client(), "explain+maps", str(EXAMPLES[0]))  # warm-up
            rows = []
            for users in args.users:
                for kind in args.kinds:
                    row = load(server, kind, users, args.seconds)
                    rows.append(row)
                    print(f"{name:<5} {users:>2} users  {kind:<13} {row['req_per_s']:6.2f} req/s   p50 "
                          f"{row['p50_ms']:7.1f} ms   p95 {row['p95_ms']:7.1f} ms   errors {row['errors']}"
                          + (f"  e.g. {row['error_samples'][0]}" if row["errors"] else ""), flush=True)
            out["runs"][name] = rows
        finally:
            server.stop()
    ratios = {}
    for a, b in zip(out["runs"]["app"], out["runs"]["noop"]):
        ratios.setdefault(str(a["users"]), {})[a["kind"]] = round(a["req_per_s"] / b["req_per_s"], 2)
    out["ratio_app_over_noop"] = ratios
    for users, by_kind in ratios.items():
        print(f"app / no-op req/s at {users:>2} users: " + ", ".join(f"{k} {v:.2f}x" for k, v in by_kind.items()))
    if args.soak:
        server = Server(ROOT / "space" / "app.py", args.model, delete_cache=args.delete_cache)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                result = soak(server, args.soak, 8, distinct_uploads(Path(tmp)))
            result["delete_cache"] = args.delete_cache
            out["soak"] = result
            print(f"soak: {result['requests']} requests in {result['seconds']} s, errors {result['errors']}, RSS "
                  f"growth over the second half {result['rss_growth_second_half_mb']:+.1f} MB"
                  + (f"  e.g. {result['error_samples'][0]}" if result["errors"] else ""))
        finally:
            server.stop()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
