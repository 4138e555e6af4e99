"""The evaluation's batch size on this CPU: `s10.evaluate.predict_logits` (exact float32, channels-last) over the same
test images at several batch sizes, rounds alternating, the median of each; the speed of each against a batch of
500 (the GPU default), and whether its logits are bit for bit those of the batch of 500.

    python bench/eval_batch.py --data .data/cifar10 --model release/model
    python bench/eval_batch.py --data .data/cifar10 --images 2000 --sizes 500 250 100 50 --threads 1

Prints the machine and one line per batch size. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=".data/cifar10")
    p.add_argument("--model", default="release/model")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--sizes", type=int, nargs="+", default=[500, 250, 100, 50])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = p.parse_args()
    from s10 import hardware
    from s10.data import load_dataset
    from s10.evaluate import predict_logits
    from s10.model import S10Net

    if args.threads:
        torch.set_num_threads(args.threads)
    net = S10Net.from_pretrained(args.model).to(memory_format=torch.channels_last).eval()
    images = load_dataset(args.data).test.images[:args.images]
    cfg = net.config
    reference = predict_logits(net, images, cfg.mean, cfg.std, batch_size=500)
    speed, same = {b: [] for b in args.sizes}, {}
    for _ in range(args.rounds):
        for b in args.sizes:
            t0 = time.perf_counter()
            logits = predict_logits(net, images, cfg.mean, cfg.std, batch_size=b)
            speed[b].append(len(images) / (time.perf_counter() - t0))
            same[b] = torch.equal(logits, reference)
    print(f"{hardware.cpu().name}, {torch.get_num_threads()} thread(s), {len(images)} images, {args.rounds} rounds")
    base = statistics.median(speed[500]) if 500 in speed else None
    for b in args.sizes:
        median = statistics.median(speed[b])
        ratio = f", {median / base:.2f}x the batch of 500" if base else ""
        print(f"  batch {b:4d}: {median:6.1f} images/s{ratio}; logits {'identical' if same[b] else 'DIFFER'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
