"""'None of the ten': out-of-distribution scores built from the S10 network itself, and the detector that travels in
the model folder.

A score is higher for a picture that looks less like CIFAR-10. Each one reads what one forward pass gives: the
logits, or the penultimate features (the 512 values the classifier's linear layer reads).

- `msp`: 1 - the top calibrated probability (the low-confidence hint's quantity; Hendrycks & Gimpel 2017).
- `energy`: -T log sum exp(logits / T), with the model's temperature T (Liu et al. 2020).
- `mahalanobis`: the smallest Mahalanobis distance of the features to a class mean, with one covariance shared by
  the classes, both fitted on the training images (Lee et al. 2018, without input preprocessing).
- `knn`: 1 - the cosine similarity of the features to their k-th nearest training image's (Sun et al. 2022), over
  all training images or a seeded sample of them (small enough to ship).

bench/ood.py measures them (AUROC, false-positive rate at 95 % of CIFAR-10 test images kept) and writes the best into
the model folder: config.json's `ood` (the score, its threshold and how it was measured) and, for a score that needs
them, its statistics in ood.safetensors. The app loads it with `Detector.load` and warns when it fires.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

SCORES = ("msp", "energy", "mahalanobis", "knn")
# What a detector that fires has measured, score by score, in the words the page shows a visitor: the threshold is
# the score that `share` % of the CIFAR-10 test images stay under (bench/ood.py).
MEASURES = {
    "msp": "The model's top calibrated probability for it is lower than for {share:.0f} % of the CIFAR-10 test images.",
    "energy": "The model's evidence for the ten classes together (the energy of its logits) is weaker than for "
              "{share:.0f} % of the CIFAR-10 test images.",
    "mahalanobis": "Its features lie farther from the nearest class's training features than those of {share:.0f} % "
                   "of the CIFAR-10 test images do.",
    "knn": "Its features lie farther from those of the nearest CIFAR-10 training images than the features of "
           "{share:.0f} % of the CIFAR-10 test images do.",
}
STATS_FILE = "ood.safetensors"
KNN_K = 10


@torch.no_grad()
def features_and_logits(model: torch.nn.Module, x: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features (B, 512) and logits (B, classes), float32, of normalised images, in batches."""
    feats, logits = [], []
    for start in range(0, len(x), batch):
        f = model.features(x[start:start + batch].float())
        feats.append(f.float())
        logits.append(model.head[-1](f).float())
    return torch.cat(feats), torch.cat(logits)


def fit_gaussian(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """Class means and the precision of the covariance they share (float32; computed in float64)."""
    f = features.double()
    means = torch.stack([f[labels == c].mean(0) for c in range(num_classes)])
    centred = f - means[labels]
    cov = centred.T @ centred / len(f)
    return {"means": means.float(), "precision": torch.linalg.pinv(cov, hermitian=True).float()}


def fit_knn(features: torch.Tensor, k: int = KNN_K, sample: int | None = None,
            seed: int = 0) -> dict[str, torch.Tensor]:
    """The unit-length features of the training images (or of a seeded sample of `sample` of them), in float16 (half
    the bytes to ship; the similarities are computed in float32), and k."""
    if sample is not None and sample < len(features):
        features = features[torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))[:sample]]
    return {"bank": torch.nn.functional.normalize(features.float(), dim=1).half(), "k": torch.tensor([k])}


def score(kind: str, features: torch.Tensor, logits: torch.Tensor, temperature: float = 1.0,
          stats: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The `kind` score of each row, float32 (B,): higher means less like the training data."""
    logits = logits.float()
    if kind == "msp":
        return 1 - (logits / temperature).softmax(-1).amax(-1)
    if kind == "energy":
        return -temperature * torch.logsumexp(logits / temperature, -1)
    if kind == "mahalanobis":
        d = features.float()[:, None, :] - stats["means"][None]  # (B, classes, D)
        return torch.einsum("bcd,de,bce->bc", d, stats["precision"], d).amin(-1)
    if kind == "knn":
        rows = torch.nn.functional.normalize(features.float(), dim=1)
        k, bank = int(stats["k"]), stats["bank"].float()
        return torch.cat([1 - (chunk @ bank.T).topk(k, dim=1).values[:, -1]
                          for chunk in rows.split(1000)]) if len(rows) else rows.new_zeros(0)
    raise ValueError(f"unknown out-of-distribution score {kind!r}; choose one of {', '.join(SCORES)}")


@dataclass
class Detector:
    """A score and the threshold above which a picture is called none of the ten; `measured` keeps how it did."""

    kind: str
    threshold: float
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    measured: dict = field(default_factory=dict)

    def scores(self, features: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        return score(self.kind, features, logits, temperature, self.stats)

    def fires(self, features: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        return self.scores(features, logits, temperature) > self.threshold

    def measures(self) -> str:
        """What it measured when it fires, for the page: the score in words, against the test images it keeps."""
        return MEASURES[self.kind].format(share=100 * self.measured.get("keeps", 0.95))

    def config(self) -> dict:
        """What config.json's `ood` holds."""
        entry = {"score": self.kind, "threshold": self.threshold, **self.measured}
        if self.stats:
            entry["file"] = STATS_FILE
        return entry

    def save(self, folder: str | Path) -> dict:
        """Write the statistics (if any) into `folder`; returns the config entry."""
        from safetensors.torch import save_file

        path = Path(folder) / STATS_FILE
        if self.stats:
            save_file({k: v.contiguous() for k, v in self.stats.items()}, str(path))
        else:
            path.unlink(missing_ok=True)
        return self.config()

    @classmethod
    def load(cls, entry: dict, folder: str | Path | None) -> "Detector | None":
        """The detector a model's config describes, or None when it has none. Its statistics file is read from
        `folder` (a model folder or a Hub snapshot); a missing file is an error, not a silent pass."""
        if not entry:
            return None
        kind, threshold = entry["score"], float(entry["threshold"])
        if kind not in SCORES:
            raise ValueError(f"unknown out-of-distribution score {kind!r} in the model's config")
        stats = {}
        if entry.get("file"):
            from safetensors.torch import load_file

            if folder is None or not (Path(folder) / entry["file"]).is_file():
                raise FileNotFoundError(f"the model's out-of-distribution statistics {entry['file']} are missing")
            stats = load_file(str(Path(folder) / entry["file"]))
        measured = {k: v for k, v in entry.items() if k not in ("score", "threshold", "file")}
        return cls(kind, threshold, stats, measured)
