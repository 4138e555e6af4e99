"""The committed release: its record reproduces the README, its weights reproduce the figures, its examples."""

import json

import pytest

from s10.inference import load_image, probabilities, to_input
from s10.model import S10Net
from tests.conftest import CIFAR, ROOT, App

RELEASE = ROOT / "release"
pytestmark = pytest.mark.skipif(not (RELEASE / "model" / "model.safetensors").is_file(),
                                reason="no release yet: the 24-epoch release run has not finished")


RESULTS_PAGE = ROOT / "docs" / "results.md"


def readme_section() -> str:
    """The generated results section (docs/results.md)."""
    from s10.report import END, START

    return RESULTS_PAGE.read_text().split(START, 1)[1].split(END, 1)[0]


def readme_headline() -> str:
    from s10.report import HEADLINE_END, HEADLINE_START

    return (ROOT / "README.md").read_text().split(HEADLINE_START, 1)[1].split(HEADLINE_END, 1)[0]


def test_report_reproduces_the_results_page_and_the_readme_headline():
    from s10.report import RECIPES_END, RECIPES_START, SCREEN_END, SCREEN_START, headline, recipes_table, render
    from s10.report import screen_table

    assert readme_section() == "\n" + render(RELEASE, RESULTS_PAGE.parent)
    assert readme_headline() == "\n" + headline(RELEASE)
    training = (ROOT / "docs" / "training.md").read_text()
    assert training.split(RECIPES_START, 1)[1].split(RECIPES_END, 1)[0] == "\n" + recipes_table()
    assert training.split(SCREEN_START, 1)[1].split(SCREEN_END, 1)[0] == "\n" + screen_table(RELEASE / "screen")


def test_the_readme_itself_shows_the_curves_the_ten_mistakes_and_the_log():
    """What the assignment asks of the README, in README.md itself (not behind a link), generated from release/:
    the curves and the mistakes' pictures (files that exist), the 10 mistakes' true and predicted labels as the
    release's misclassified pack has them, and every line of train.log in a folded block."""
    import re

    from s10.report import RUN_END, RUN_START, readme_run

    text = (ROOT / "README.md").read_text()
    section = text.split(RUN_START, 1)[1].split(RUN_END, 1)[0]
    assert section == "\n" + readme_run(RELEASE, ROOT)
    assert text.index(RUN_START) > text.index("## Quick start")
    for image in re.findall(r"!\[[^]]*\]\(([^)]+)\)", section):
        assert (ROOT / image).is_file(), image
    assert {"release/curves.png", "release/misclassified.png"} <= set(re.findall(r"\]\((release/[^)]+\.png)\)", section))
    mistakes = json.loads((RELEASE / "model" / "misclassified.json").read_text())[:10]
    rows = re.findall(r"^\| (\d+) \| (\d+) \| (\w+) \| (\w+) \|", section, re.M)
    assert [(int(i), t, p) for _, i, t, p in rows] == [(m["test_index"], m["true"], m["pred"]) for m in mistakes]
    folded = section.split("<details>", 1)[1].split("</details>", 1)[0]
    assert all(line in folded for line in (RELEASE / "train.log").read_text().splitlines())


def test_every_benchmark_section_is_what_its_result_file_renders():
    """No figure in the README or docs/ is typed by hand: each marked section equals what bench/render.py makes of
    the committed result file, and every result file has its section."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("render", ROOT / "bench" / "render.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    names = set()
    for path in render.DOCS:
        text = path.read_text()
        for name in render.sections(text):
            names.add(name)
            assert (render.RESULTS / f"{name}.json").is_file(), f"{path.name}: no result file for {name}"
            body = text.split(render.start(name), 1)[1].split(render.end(name), 1)[0]
            assert body == "\n" + render.render(name), f"{path.name}: section {name} differs from its result file"
    assert names == {p.stem for p in render.RESULTS.glob("*.json")}


def test_examples_are_classified_as_their_class_or_the_readme_says_which_not():
    model = S10Net.from_pretrained(RELEASE / "model")
    cfg = model.config
    paths = sorted((ROOT / "space" / "examples").glob("*.png"))
    assert sorted(p.stem for p in paths) == sorted(cfg.class_names)
    wrong = {}
    for path in paths:
        pred = cfg.class_names[probabilities(model, to_input(load_image(path), cfg.mean, cfg.std)).argmax().item()]
        if pred != path.stem:
            wrong[path.name] = pred
    section = readme_section()
    assert f"classified by this model: {len(paths) - len(wrong)} of {len(paths)} as their own class." in section
    for name, pred in wrong.items():
        assert f"`{name}` (predicted {pred})" in section


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR.is_dir(), reason="needs the offline CIFAR-10 copy: make data")
def test_the_committed_weights_score_what_the_readme_card_and_app_state(capsys):
    """A recount of the committed weights on all 10,000 test images, by the evaluate command (its own main(), in
    this process), against the figures printed in the README, the model card's model-index and the config the app's
    header reads."""
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    from s10 import evaluate

    code = evaluate.main([str(RELEASE / "model"), str(CIFAR)])
    proc = capsys.readouterr()  # .out, .err
    assert code == 0, proc.err
    measured = json.loads(proc.out)
    assert measured["test_images"] == 10_000
    plain, tta = (f"{100 * measured[k]:.2f} %" for k in ("test_acc", "test_acc_tta"))
    assert f"| CIFAR-10 test split | 10,000 | {plain} | {tta} |" in readme_section()
    assert f"**{plain}** test accuracy on CIFAR-10's 10,000 test images (**{tta}** with flip TTA)" in readme_headline()
    assert f"{plain} on 10,000 test images, {tta} with flip TTA" in proc.err
    recorded = json.loads((RELEASE / "results.json").read_text())["calibration"]
    cal = measured["calibration"]
    assert cal["uncalibrated"] == recorded["uncalibrated"] and cal["calibrated_held_out"] == recorded["calibrated"]
    assert cal["temperature_in_config"] == cal["temperature_fitted_here"] == recorded["temperature"]
    before, after = recorded["uncalibrated"], recorded["calibrated"]
    assert (f"{before['ece']:.4f} / {before['nll']:.4f} / {before['brier']:.4f} plain softmax, {after['ece']:.4f} / "
            f"{after['nll']:.4f} / {after['brier']:.4f} temperature-scaled") in proc.err
    assert f"| temperature-scaled (held-out halves) | {after['ece']:.4f} |" in readme_section()
    card = ModelCard.load(RELEASE / "model" / "README.md")
    assert f"| temperature-scaled (held-out halves) | {after['ece']:.4f} |" in card.text
    _, evals = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert {e.metric_name: e.metric_value for e in evals} == {"Test accuracy": measured["test_acc"],
                                                              "Test accuracy (flip TTA)": measured["test_acc_tta"]}
    shown = S10Net.from_pretrained(RELEASE / "model").config.results
    assert (shown["test_acc"], shown["test_acc_tta"]) == (measured["test_acc"], measured["test_acc_tta"])


def test_release_meets_the_bar_and_ships_small():
    results = json.loads((RELEASE / "results.json").read_text())
    assert results["epochs"] == 24 and results["test_images"] == 10_000
    assert results["test_acc"] >= 0.93, results["test_acc"]
    model_bytes = sum(p.stat().st_size for p in (RELEASE / "model").rglob("*") if p.is_file())
    assert (RELEASE / "reliability.png").is_file() and (RELEASE / "model" / "reliability.png").is_file()
    assert model_bytes < 30_000_000, model_bytes
    assert not list(RELEASE.rglob("*.ckpt"))


def test_the_served_page_states_the_readme_figures():
    """The running app (space/app.py with the released model) heads its page with the README's test accuracies."""
    import re
    import urllib.request

    row = r"\| CIFAR-10 test split \| 10,000 \| ([\d.]+ %) \| ([\d.]+ %) \|"
    plain, tta = re.search(row, readme_section()).groups()
    app = App(ROOT / "space" / "app.py", env={"S10_MODEL": str(RELEASE / "model")}, cwd=ROOT)
    try:
        page = json.loads(urllib.request.urlopen(app.url + "config", timeout=30).read())
    finally:
        app.stop()
    texts = [c.get("props", {}).get("value") for c in page["components"]]
    header = next(t for t in texts if isinstance(t, str) and t.startswith("# S10"))
    assert f"Test accuracy: {plain} on the 10,000 CIFAR-10 test images ({tta} with flip TTA)." in header


def test_the_docs_prose_quotes_no_measured_figure_and_no_stale_count():
    """A figure typed into prose goes stale: outside the generated sections, docs/app.md names no deletion,
    insertion or gap value (the benchmark's table holds them); the Space's one-line description states no count
    of CAM methods other than the page's; docs/publishing.md's account of the bundle covers every module it holds."""
    import re

    from hub.space import INFERENCE_MODULES
    from s10.cam import CAM_METHODS

    prose = re.sub(r"<!-- bench:(\w+):start.*?<!-- bench:\1:end -->", "", (ROOT / "docs" / "app.md").read_text(),
                   flags=re.S)
    assert not re.findall(r"(?:deletion|insertion|gap)\s+[+-]?\d+\.\d+", prose)
    space = (ROOT / "space" / "README.md").read_text()
    description = re.search(r"^short_description: (.+)$", space, re.M).group(1)
    assert all(int(n) == len(CAM_METHODS) for n in re.findall(r"(\d+) methods", description)), description
    publishing = (ROOT / "docs" / "publishing.md").read_text()
    assert "INFERENCE_MODULES" in publishing or all(m in publishing for m in INFERENCE_MODULES[1:])
