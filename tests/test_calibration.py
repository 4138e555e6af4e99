"""Calibration: temperature scaling recovers a known temperature, leaves the accuracy alone, travels with the model,
and the released app shows the calibrated probabilities."""

import json

import pytest
import torch

from s10.calibration import cross_fitted, fit_temperature, reliability, risk_coverage, scores
from s10.inference import load_image, probabilities, to_input
from s10.model import S10Config, S10Net
from tests.conftest import RELEASED, ROOT


def synthetic(temperature: float, n: int = 20_000, classes: int = 10, seed: int = 0):
    """Logits and labels drawn from softmax(logits / temperature): the right T is `temperature`."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g) * 4
    labels = torch.multinomial((logits / temperature).softmax(-1), 1, generator=g).flatten()
    return logits, labels


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_fit_recovers_a_known_temperature(temperature):
    logits, labels = synthetic(temperature)
    assert fit_temperature(logits, labels) == pytest.approx(temperature, rel=0.05)


def test_scaling_fixes_calibration_and_keeps_the_accuracy():
    logits, labels = synthetic(0.6)  # the network's logits are too soft by 1 / 0.6, as with label smoothing
    held_out, halves = cross_fitted(logits, labels)
    before, after = scores(logits, labels), scores(held_out, labels)
    assert all(t == pytest.approx(0.6, rel=0.1) for t in halves)
    assert after["ece"] < before["ece"] / 3 and after["nll"] < before["nll"] and after["brier"] < before["brier"]
    assert torch.equal(held_out.argmax(-1), logits.argmax(-1))
    bins = reliability(held_out.softmax(-1), labels)
    assert sum(b["count"] for b in bins) == len(labels) and len(bins) == 15
    curve = risk_coverage(held_out.softmax(-1), labels)
    assert [r["coverage"] for r in curve] == [1.0, 0.95, 0.9, 0.8, 0.5]
    assert all(a["accuracy"] <= b["accuracy"] for a, b in zip(curve, curve[1:]))  # abstaining raises accuracy


def test_the_temperature_travels_with_the_model_and_leaves_the_argmax(tmp_path):
    torch.manual_seed(0)
    net = S10Net(S10Config(temperature=0.5)).eval()
    net.save_pretrained(tmp_path / "hot")
    loaded = S10Net.from_pretrained(tmp_path / "hot")
    assert loaded.config.temperature == 0.5
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        logits = loaded(x)
    torch.testing.assert_close(probabilities(loaded, x), (logits / 0.5).softmax(-1))
    assert torch.equal(probabilities(loaded, x).argmax(-1), logits.argmax(-1))


def test_a_folder_without_a_temperature_predicts_as_before(tmp_path):
    """A model folder from before calibration (no "temperature" in its config.json) loads with T = 1: the plain
    softmax."""
    S10Net().save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    config.pop("temperature")
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    model = S10Net.from_pretrained(tmp_path / "old")
    x = torch.randn(4, 3, 32, 32)
    assert model.config.temperature == 1.0
    with torch.no_grad():
        torch.testing.assert_close(probabilities(model, x), model(x).softmax(-1))
    with pytest.raises(ValueError, match="temperature must be positive"):
        S10Config(temperature=0)


def test_released_app_shows_softmax_of_logits_over_t(released_app):
    """The top probability the app states for a test image is softmax(logits / T) of the committed weights, with the
    T of the committed config (not 1)."""
    config = json.loads((RELEASED / "config.json").read_text())
    assert config["temperature"] != 1.0
    net = S10Net.from_pretrained(RELEASED)
    for name in ("cat", "ship", "dog"):
        path = ROOT / "space" / "examples" / f"{name}.png"
        x = to_input(load_image(path), net.config.mean, net.config.std)
        with torch.no_grad():
            want = (net(x) / config["temperature"]).softmax(-1)[0]
        shown = released_app.predict(str(path), 10)
        for label, p in shown.items():
            assert p == pytest.approx(want[net.config.class_names.index(label)].item(), abs=1e-6)
        explained, _, _, _ = released_app.explain(str(path), 10, True, 3)
        for label, p in explained.items():  # from the CAM pass
            assert p == pytest.approx(want[net.config.class_names.index(label)].item(), abs=1e-4)


def test_release_is_calibrated_on_held_out_halves():
    results = json.loads((ROOT / "release" / "results.json").read_text())
    cal = results["calibration"]
    assert cal["calibrated"]["ece"] <= 0.015 < cal["uncalibrated"]["ece"]
    assert cal["calibrated"]["nll"] < cal["uncalibrated"]["nll"]
    assert json.loads((RELEASED / "config.json").read_text())["temperature"] == cal["temperature"]
    assert (ROOT / "release" / "reliability.png").stat().st_size > 10_000
