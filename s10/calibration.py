"""Do the probabilities mean what they say? Calibration error, negative log-likelihood and Brier score, temperature
scaling (Guo et al. 2017), a reliability diagram's bins, and accuracy against coverage.

Temperature scaling divides the logits by one scalar T > 0, fitted by minimising the NLL; the argmax (so the accuracy)
is unchanged. A network trained with label smoothing is under-confident (Müller et al. 2019): T < 1 sharpens it.

The S10 recipe trains on all 50,000 training images, so there is no validation split to fit T on. The reported
calibrated figures are cross-fitted on the test set (`cross_fitted`): a seeded random half fits T and the other half
is scored with it, then the other way round, so no image is scored by a T fitted on it. The shipped T is fitted on
all test images. torchmetrics computes the calibration error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

from s10.model import calibrated

BINS = 15  # equal-width bins of the top probability, as in Guo et al. 2017
COVERAGES = (1.0, 0.95, 0.9, 0.8, 0.5)  # fractions of the test images kept, most confident first
T_RANGE = (0.05, 20.0)  # temperatures a fit may return


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 that minimises the NLL of softmax(logits / T): L-BFGS on log T (a convex 1-D problem in practice)."""
    logits, labels = logits.detach().double(), labels.detach()
    log_t = torch.zeros(1, dtype=torch.float64, device=logits.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1, max_iter=100, tolerance_grad=1e-10, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return float(log_t.detach().exp().clamp(*T_RANGE))


def scores(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> dict:
    """ECE (15 bins, L1), NLL (nats) and Brier score (sum over classes, mean over images) of softmax(logits / T)."""
    logits = logits.float() / temperature
    probs = logits.softmax(-1)
    onehot = F.one_hot(labels, probs.shape[-1]).float()
    return {
        "ece": round(multiclass_calibration_error(probs, labels, probs.shape[-1], n_bins=BINS, norm="l1").item(), 4),
        "nll": round(F.cross_entropy(logits, labels).item(), 4),
        "brier": round(((probs - onehot) ** 2).sum(-1).mean().item(), 4),
    }


def cross_fitted(logits: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, list[float]]:
    """Held-out calibrated logits: a seeded random half of the images fits T, the other half is divided by it, and
    the other way round. (calibrated logits, [T of half A, T of half B])."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    halves = order[: len(order) // 2], order[len(order) // 2:]
    out = logits.float().clone()
    temperatures = []
    for fit_on, score_on in (halves, halves[::-1]):
        t = fit_temperature(logits[fit_on], labels[fit_on])
        out[score_on] = logits[score_on].float() / t
        temperatures.append(round(t, 4))
    return out, temperatures


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> list[dict]:
    """Per equal-width bin of the top probability: its range, count, mean confidence and accuracy (None if empty)."""
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels).float()
    index = (confidence * bins).long().clamp(max=bins - 1)
    out = []
    for b in range(bins):
        inside = index == b
        n = int(inside.sum())
        out.append({"low": round(b / bins, 4), "high": round((b + 1) / bins, 4), "count": n,
                    "confidence": round(confidence[inside].mean().item(), 4) if n else None,
                    "accuracy": round(correct[inside].mean().item(), 4) if n else None})
    return out


def risk_coverage(probs: torch.Tensor, labels: torch.Tensor, coverages=COVERAGES) -> list[dict]:
    """Accuracy on the most confident fraction of the images, for each coverage, and the top probability at its
    edge (the least confident image kept)."""
    confidence, predicted = probs.max(-1)
    order = confidence.argsort(descending=True, stable=True)
    correct = (predicted == labels)[order].float()
    out = []
    for c in coverages:
        n = max(1, round(c * len(order)))
        out.append({"coverage": c, "images": n, "accuracy": round(correct[:n].mean().item(), 4),
                    "min_confidence": round(confidence[order[n - 1]].item(), 4)})
    return out


def threshold_split(probs: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict:
    """How often the model is right where its top probability is at or above `threshold`, and below it."""
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels).float()
    below = confidence < threshold
    return {"share_below": round(below.float().mean().item(), 4),
            "accuracy_above": round(correct[~below].mean().item(), 4) if (~below).any() else None,
            "accuracy_below": round(correct[below].mean().item(), 4) if below.any() else None}


def report(logits: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> dict:
    """Everything results.json says about calibration: the shipped T (fitted on all images), the scores before and
    after (after: cross-fitted halves), reliability bins before and after, and risk-coverage with the shipped T (the
    probabilities the app shows; T barely changes which images are the most confident)."""
    held_out, half_temperatures = cross_fitted(logits, labels, seed)
    temperature = round(fit_temperature(logits, labels), 4)
    return {
        "temperature": temperature,
        "protocol": f"2-fold cross-fitting on the test set (seed {seed}): each half scored with the T fitted on the "
                    "other; the shipped T fitted on all test images",
        "half_temperatures": half_temperatures,
        "uncalibrated": scores(logits, labels),
        "calibrated": scores(held_out, labels),
        "reliability_uncalibrated": reliability(logits.float().softmax(-1), labels),
        "reliability_calibrated": reliability(held_out.softmax(-1), labels),
        "risk_coverage": risk_coverage(calibrated(logits, temperature), labels),
    }
