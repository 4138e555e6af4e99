"""Training throughput: our on-device pipeline and Fabric loop against a plain PyTorch baseline, same process.

    python bench/train_throughput.py --data .data/cifar10 [--batch-size 512] [--steps 6] [--rounds 2]

Baseline, the way most S10 notebooks do it: a DataLoader (2 workers) over PIL images with torchvision per-sample
transforms (RandomCrop 32 with reflect padding 4, horizontal flip, ToTensor, Normalize, an 8x8 erase), and a plain
PyTorch training loop. Ours: the uint8 data set on the device, `s10.data.augment` on whole batches, and the
LightningModule's training_step run by Fabric. Both train the same S10 net (channels_last, fp32 on a CPU, Adam),
at the same batch size. Prints (a) augmented batches/s, ours / baseline, and (b) training images/s, ours / baseline.

Measured on this 2-core CPU (release run paused): see README "Speed".
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image


class Cutout:
    """Blank one 8x8 square (clipped at the border) of a normalised (3, H, W) tensor, per sample."""

    def __init__(self, size: int = 8):
        self.size = size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        cy, cx = np.random.randint(h), np.random.randint(w)
        y0, y1 = max(0, cy - self.size // 2), min(h, cy + self.size // 2)
        x0, x1 = max(0, cx - self.size // 2), min(w, cx + self.size // 2)
        x[:, y0:y1, x0:x1] = 0
        return x


class PILDataset(torch.utils.data.Dataset):
    """What torchvision's CIFAR10 does per item: a PIL image from the uint8 array, then the transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def baseline_loader(split, mean, std, batch_size):
    from torchvision import transforms as T

    transform = T.Compose([T.RandomCrop(32, padding=4, padding_mode="reflect"), T.RandomHorizontalFlip(),
                           T.ToTensor(), T.Normalize(mean, std), Cutout(8)])
    ds = PILDataset(split.images.permute(0, 2, 3, 1).numpy(), split.labels.numpy(), transform)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=2, drop_last=True,
                                       persistent_workers=True)


def timed_batches(iterator, n: int) -> float:
    next(iterator)  # warm-up: worker start-up and first allocation are not steady state
    t = time.perf_counter()
    for _ in range(n):
        next(iterator)
    return n / (time.perf_counter() - t)


def main() -> None:
    from lightning.fabric import Fabric

    from s10.data import augment, epoch_generator, load_dataset, train_batches
    from s10.model import CIFAR10_MEAN, CIFAR10_STD, S10Net
    from s10.module import Recipe, S10Module

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=".data/cifar10")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=6, help="timed training steps per loop and round")
    p.add_argument("--pipeline-batches", type=int, default=30)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    torch.manual_seed(0)
    data = load_dataset(args.data)
    train = data.train
    bs = args.batch_size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {bs}")

    # (a) the data pipeline alone
    loader = baseline_loader(train, CIFAR10_MEAN, CIFAR10_STD, bs)
    ours_rates, base_rates = [], []
    for r in range(args.rounds):
        g = epoch_generator(0, r, "cpu")
        ours = (augment(x, CIFAR10_MEAN, CIFAR10_STD, g) for x, _ in train_batches(train, bs, 0, 1, g))
        ours_rates.append(timed_batches(ours, args.pipeline_batches))
        base_rates.append(timed_batches(iter(loader), args.pipeline_batches))
    a = np.median(ours_rates) / np.median(base_rates)
    print(f"(a) augmented batches/s: ours {np.median(ours_rates):.1f}, baseline {np.median(base_rates):.1f} "
          f"-> ratio {a:.1f}x")

    # (b) the whole training step
    fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
    module = S10Module(recipe=Recipe(batch_size=bs), steps_per_epoch=1000).to(memory_format=torch.channels_last)
    opt_config = module.configure_optimizers()
    model, optimizer = fabric.setup(module, opt_config["optimizer"])
    scheduler = opt_config["lr_scheduler"]["scheduler"]
    plain = S10Net().to(memory_format=torch.channels_last)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3, weight_decay=1e-4)
    plain_sched = torch.optim.lr_scheduler.OneCycleLR(plain_opt, max_lr=2e-3, total_steps=1000)
    base_iter = iter(loader)

    def ours_steps(n, r):
        g = epoch_generator(1, r, "cpu")
        batches = train_batches(train, bs, 0, 1, g)
        model.train()
        t = None
        for i in range(n + 1):
            if i == 1:
                t = time.perf_counter()
            x, y = next(batches)
            x = augment(x, CIFAR10_MEAN, CIFAR10_STD, g).contiguous(memory_format=torch.channels_last)
            loss = model.training_step((x, y), i)["loss"]
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            optimizer.step()
            scheduler.step()
        return n * bs / (time.perf_counter() - t)

    def baseline_steps(n):
        plain.train()
        t = None
        for i in range(n + 1):
            if i == 1:
                t = time.perf_counter()
            x, y = next(base_iter)
            x = x.contiguous(memory_format=torch.channels_last)
            loss = torch.nn.functional.cross_entropy(plain(x), y, label_smoothing=0.1)
            plain_opt.zero_grad(set_to_none=True)
            loss.backward()
            plain_opt.step()
            plain_sched.step()
        return n * bs / (time.perf_counter() - t)

    ours_rates, base_rates = [], []
    for r in range(args.rounds):
        base_rates.append(baseline_steps(args.steps))
        ours_rates.append(ours_steps(args.steps, r))
        print(f"    round {r + 1}: ours {ours_rates[-1]:.1f} img/s, baseline {base_rates[-1]:.1f} img/s")
    b = np.median(ours_rates) / np.median(base_rates)
    print(f"(b) training images/s: ours {np.median(ours_rates):.1f}, baseline {np.median(base_rates):.1f} "
          f"-> ratio {b:.2f}")


if __name__ == "__main__":
    main()
