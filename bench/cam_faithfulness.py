"""How faithful, how class-specific and how fast each CAM method is at each layer: the measurement behind the app's
methods and default.

    python bench/cam_faithfulness.py --data .data/cifar10 [--model release/model] [--images 100] [--json FILE]

For every method s10.cam measures (s10.cam.MEASURED) at every CAM layer, on a fixed sample of test images (a seeded
random choice):

- **Faithful to the class it explains**, scored on the predicted class. torchcam's `DeletionInsertionMetric` (RISE,
  Petsiuk et al. 2018) removes the pixels in the map's order, most important first, and measures the class's
  probability as they go (**deletion** AUC, lower is better), or puts them back into a blank (mean-grey) image in
  the same order (**insertion** AUC, higher is better). Their difference, insertion - deletion, is the **gap**. A
  random map at the layer's resolution is the floor. `ClassificationMetric` (Chattopadhyay et al. 2018) gives
  **average drop** and **increase in confidence** beside them (map x image; these two favour coarse maps, which keep
  most of the image).
- **Different for a different class**: the pixelwise Pearson correlation of the predicted class's map with the map of
  the second most likely class (**r 2nd**) and of the least likely one (**r last**), mean over the images. A method
  whose map does not depend on the class cannot answer "why not a dog?", whatever its faithfulness. Maps that are all
  zero have no correlation; they are counted (**flat**) and left out of the mean.
- **Latency**: the app's request, 3 maps for one image (s10.cam.class_maps: one forward and one backward pass), p50
  over repeated calls on this CPU, overlays not included. ScoreCAM is timed too, to show why the app leaves it out.

The rule, printed at the end (RULE below): a method and layer qualify when their 3 maps take under 40 ms, their maps
of two classes correlate at most 0.5 (a quarter of the variance shared) for both the second and the last class, at
most 10 % of those maps are all zero (a flat map explains nothing, and has no correlation), and their gap beats the
random map's; the default is the qualifying pair with the largest gap (within 0.02 of it, the
finer map). The page offers the methods that qualify at some layer. `--rule-only FILE` applies the rule again to
the measurements stored in FILE (after a change of the rule alone).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RULE = {"latency_budget_ms": 40.0, "max_corr": 0.5, "max_flat": 0.1, "tie_gap": 0.02}
STEPS = 16  # deletion / insertion: points per curve


def latency_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


class RandomMap:
    """The floor: a seeded uniform random map at `side` x `side`, in the shape torchcam's metrics read from an
    extractor (a model, a call that returns one map per image, a fuse, a hooks-off switch)."""

    def __init__(self, model: torch.nn.Module, side: int):
        self.model, self.side = model, side
        self.generator = torch.Generator().manual_seed(side)

    def __call__(self, class_idx, scores):
        return [torch.rand(len(scores), self.side, self.side, generator=self.generator)]

    def fuse_cams(self, cams):
        return cams[0]

    def _hooks_off(self):
        return contextlib.nullcontext()


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row of two (N, pixels) arrays; NaN where either map is constant."""
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    norm = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (a * b).sum(1) / norm, np.nan)


def qualifies(row: dict, floor: dict, images: int, rule: dict = RULE) -> bool:
    return (row["ms"] < rule["latency_budget_ms"] and row["r_second"] <= rule["max_corr"]
            and row["r_last"] <= rule["max_corr"] and row["gap"] > floor[row["side"]]
            and max(row["flat_second"], row["flat_last"]) <= rule["max_flat"] * images)


def choose(rows: list[dict], floor: dict, images: int) -> dict | None:
    fit = [r for r in rows if qualifies(r, floor, images)]
    if not fit:
        return None
    best = max(r["gap"] for r in fit)
    return max((r for r in fit if r["gap"] >= best - RULE["tie_gap"]), key=lambda r: r["side"])


def faithfulness(extractor, x: torch.Tensor, batch: int) -> dict:
    from torchcam.metrics import ClassificationMetric, DeletionInsertionMetric

    probs = partial(torch.softmax, dim=-1)
    drop = ClassificationMetric(extractor, probs)
    rise = DeletionInsertionMetric(extractor, probs, steps=STEPS, batch_size=512)
    with torch.enable_grad():
        for start in range(0, len(x), batch):
            drop.update(x[start:start + batch].clone().requires_grad_(True))
            rise.update(x[start:start + batch].clone().requires_grad_(True))
    d, r = drop.summary(), rise.summary()
    return {"drop": d["avg_drop"], "increase": d["conf_increase"], "deletion": r["deletion_auc"],
            "insertion": r["insertion_auc"], "gap": r["insertion_auc"] - r["deletion_auc"]}


def main() -> None:
    from torchcam.methods import ScoreCAM

    from s10.cam import MEASURED, class_maps, freeze
    from s10.data import load_dataset
    from s10.model import S10Net, normalize

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / ".data" / "cifar10"))
    p.add_argument("--model", default=str(ROOT / "release" / "model"))
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--repeats", type=int, default=20, help="latency: timed calls per (method, layer)")
    p.add_argument("--json", type=Path, help="write the results here (bench/results/cam_faithfulness.json, which "
                   "bench/render.py puts into docs/app.md)")
    p.add_argument("--rule-only", type=Path, metavar="FILE", help="apply RULE to FILE's stored rows and rewrite it")
    args = p.parse_args()
    if args.rule_only:
        stored = json.loads(args.rule_only.read_text())
        floor = {int(k): v for k, v in stored["random_gap"].items()}
        for r in stored["rows"]:
            r["qualifies"] = qualifies(r, floor, stored["images"])
        choice = choose(stored["rows"], floor, stored["images"])
        stored.update(rule=RULE, offered=[m for m in MEASURED if any(r["qualifies"] for r in stored["rows"]
                                                                     if r["method"] == m)],
            choice={"method": choice["method"], "layer": choice["layer"]} if choice else None)
        args.rule_only.write_text(json.dumps(stored, indent=1) + "\n")
        print(f"offered: {', '.join(stored['offered'])}; default: {stored['choice']}")
        return exit_if_the_app_disagrees(stored["offered"], stored["choice"])
    torch.manual_seed(0)
    model = freeze(S10Net.from_pretrained(args.model))
    layers = model.config.cam_layers
    test = load_dataset(args.data).test
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[: args.images]
    x_all = normalize(test.images[pick], model.config.mean, model.config.std)
    sides, hooks = {}, []
    for layer in layers:
        module = model.get_submodule(layer)
        hooks.append(module.register_forward_hook(lambda m, i, o, name=layer: sides.__setitem__(name, o.shape[-1])))
    with torch.inference_mode():
        order = model(x_all).argsort(-1, descending=True)
    for hook in hooks:
        hook.remove()
    top3 = order[0, :3].tolist()

    floor = {}
    for side in sorted(set(sides.values()), reverse=True):
        floor[side] = faithfulness(RandomMap(model, side), x_all, args.batch)["gap"]
        print(f"random map {side}x{side}: gap {floor[side]:.3f}", flush=True)

    rows = []
    for method, cls in MEASURED.items():
        for layer in layers:
            extractor = cls(model, target_layer=layer)
            row = {"method": method, "layer": layer, "side": sides[layer],
                   **faithfulness(extractor, x_all, args.batch)}
            extractor.remove_hooks()
            for name, other in (("second", order[:, 1]), ("last", order[:, -1])):
                pairs = torch.stack([order[:, 0], other], 1).flatten().tolist()
                maps = np.concatenate([class_maps(model, x_all[s:s + args.batch], layer,
                                                  pairs[2 * s:2 * (s + args.batch)], method)
                                       for s in range(0, len(x_all), args.batch)]).reshape(len(x_all), 2, -1)
                r = pearson(maps[:, 0], maps[:, 1])
                row[f"r_{name}"], row[f"flat_{name}"] = float(np.nanmean(r)), int(np.isnan(r).sum())
            row["ms"] = latency_ms(lambda: class_maps(model, x_all[:1], layer, top3, method), args.repeats)
            rows.append(row)
            print(f"{method:<9} {layer:<11} deletion {row['deletion']:.3f} insertion {row['insertion']:.3f} gap "
                  f"{row['gap']:+.3f} | r 2nd {row['r_second']:+.2f} r last {row['r_last']:+.2f} (flat "
                  f"{row['flat_second']}/{row['flat_last']}) | drop {row['drop']:.3f} increase {row['increase']:.3f}"
                  f" | 3 maps {row['ms']:5.1f} ms", flush=True)

    score_ms = {}
    for layer in layers:
        def score_cams():
            with ScoreCAM(model, target_layer=layer, batch_size=64) as extractor, torch.inference_mode():
                scores = model(x_all[:1].expand(3, -1, -1, -1))
                extractor(top3, scores)
        score_ms[layer] = latency_ms(score_cams, 1)  # seconds each: one timed call after the warm-up
        print(f"ScoreCAM  {layer:<11} 3 maps {score_ms[layer]:6.1f} ms (latency only)", flush=True)

    for r in rows:
        r["qualifies"] = qualifies(r, floor, len(x_all))
    choice = choose(rows, floor, len(x_all))
    offered = [m for m in MEASURED if any(r["qualifies"] for r in rows if r["method"] == m)]
    print(f"\n{len(x_all)} test images, model {args.model}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"qualify at some layer (offered): {', '.join(offered) or 'none'}")
    print("default: " + (f"{choice['method']} at {choice['layer']} (gap {choice['gap']:.3f}, r 2nd "
                         f"{choice['r_second']:+.2f}, 3 maps {choice['ms']:.1f} ms)" if choice else "none qualifies"))
    if args.json:
        from s10 import hardware

        def rounded(v):
            return round(v, 4) if isinstance(v, float) else v

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "machine": hardware.cpu().describe(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d"), "images": len(x_all), "repeats": args.repeats, "steps": STEPS,
            "rule": RULE, "sides": sides, "random_gap": {str(k): round(v, 4) for k, v in floor.items()},
            "rows": [{k: rounded(v) for k, v in r.items()} for r in rows],
            "scorecam_ms": {k: round(v, 1) for k, v in score_ms.items()}, "offered": offered,
            "choice": {"method": choice["method"], "layer": choice["layer"]} if choice else None}, indent=1) + "\n")
        print(f"wrote {args.json}")
    exit_if_the_app_disagrees(offered, {"method": choice["method"], "layer": choice["layer"]} if choice else None)


def exit_if_the_app_disagrees(offered: list[str], choice: dict | None) -> None:
    message = app_disagrees(offered, choice)
    if message:
        sys.exit(f"bench/cam_faithfulness.py: {message}")


def app_disagrees(offered: list[str], choice: dict | None) -> str | None:
    """What s10/cam.py (the page's methods and default) must change to follow this rule's pick, or None if it
    does: `make release-record` stops there, before the screenshots, rather than ship a default the rule rejects."""
    from s10 import cam

    if choice is None:
        return ("no method and layer qualify under the rule: the app's default cannot follow it; look at the rows "
                "(the latency is measured on this machine: was it busy?)")
    if list(cam.OFFERED) == offered and (cam.DEFAULT_METHOD, cam.DEFAULT_LAYER) == (choice["method"], choice["layer"]):
        return None
    return (f"s10/cam.py does not follow the benchmark: set OFFERED = {tuple(offered)}, DEFAULT_METHOD = "
            f"{choice['method']!r}, DEFAULT_LAYER = {choice['layer']!r} (it has {cam.OFFERED}, "
            f"{cam.DEFAULT_METHOD!r}, {cam.DEFAULT_LAYER!r})")


if __name__ == "__main__":
    main()
