# s10: `make test` is the one test command; it builds .venv and installs everything it needs first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared
DATA := .data/cifar10
RUN ?= runs/s10
RELEASE := release

.PHONY: gpu-check slurm-test help install test test-fast data train resume seeds screen screen-record seeds-record demo bench report release-record release-docs release-recalibrate screenshots publish publish-dry-run clean browser

help:
	@echo "make install | test | test-fast | data | train | resume | demo | bench | report | screenshots | release-record RUN=... | release-docs | seeds SEEDS=... | seeds-record SEEDS=... | screen SCREEN=... | screen-record RUNS=... | recipe-record NAME=... RUNS=... | release-recalibrate | publish-dry-run | publish"

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

# A Chromium for the browser test and the screenshots: the system's where there is one; else, as root, Debian's package;
# else Playwright's own browser download (needs internet; no root). tests/conftest.py's system_chromium picks it up.
browser: install
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else $(PY) -m playwright install chromium; fi

# CIFAR-10 as class folders in .data/cifar10 (s10/cifar10.py): the offline archive where it exists (../shared/data on
# this project's machines; the folder is tied to it by its sha256, so a folder from another archive is replaced), else
# torchvision's checksummed download; a new folder's images are decoded once into the trainer's cache. An existing
# folder is kept when there is no archive; nothing is removed before its replacement is complete.
ARCHIVE := $(SHARED)/data/cifar10-imagefolder.tar.gz
data: install
	$(PY) -m s10.cifar10 $(DATA) --archive $(ARCHIVE)

# pytest-xdist workers: one per core, each with its share of the cores for its threads (tests/conftest.py). More
# workers than cores made the suite slower on a 2-core machine (more CPU time in all, not less idle time).
WORKERS ?= $(shell nproc)
test: install browser data
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slurm" -n $(WORKERS) --dist loadgroup --durations=15

test-fast: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slurm and not slow and not browser" -n $(WORKERS) --dist loadgroup

# RECIPE=course|adam|page|tricks: a named recipe (docs/training.md: Recipes), which says where its peak LR comes
# from; without one, the default recipe (page's values). FLAGS="...": single flags over it (--holdout 5000,
# --compile, ...).
RECIPE ?=
FLAGS ?=
# The peak LR: the default recipe's given 0.4 (for batch 512) or a named recipe's own; LR=--find-lr for the LR range
# test, LR="--max-lr 0.2" to give one.
LR ?=
TRAIN_FLAGS = $(if $(RECIPE),--recipe $(RECIPE)) $(LR) $(FLAGS)
train: install data
	$(PY) fabric_train.py --data $(DATA) --out $(RUN) $(TRAIN_FLAGS)

resume: install data
	$(PY) fabric_train.py --data $(DATA) --out $(RUN) $(TRAIN_FLAGS) --resume

# The finished seeds' records (no weights) and their spread into release/seeds/, then into the README, the results
# and the model card (seed 0 is the release).
seeds-record: install
	$(PY) -m s10.seeds $(SEEDS)/seed0 $(SEEDS)/seed1 $(SEEDS)/seed2 --out $(RELEASE)/seeds
	$(PY) -m hub.card $(RELEASE)
	$(PY) -m s10.report $(RELEASE) --readme README.md --results docs/results.md

# The three-seed campaign of a recipe (docs/results.md): one run after another into $(SEEDS)/seed<k>. Run it again to
# resume: a finished seed is skipped, a stopped one goes on from its last checkpoint.
SEEDS ?= runs/seeds
seeds: install data
	for k in 0 1 2; do \
		out=$(SEEDS)/seed$$k; \
		if [ -f $$out/results.json ]; then echo "seed $$k: done"; continue; fi; \
		if [ -f $$out/config.json ]; then resume=--resume; else resume=; fi; \
		$(PY) fabric_train.py --data $(DATA) --out $$out $(TRAIN_FLAGS) --seed $$k --no-progress-bar $$resume \
			|| exit 1; \
	done

# Issue 36's screen (docs/training.md, Recipes): seed 0, 24 epochs, trained on 45,000 images and measured on the 5,000
# held out (val_acc), never on the test set. First `page` itself and `tricks` (`page` with every option that keeps the
# network); then `tricks` less one option at a time, each option's share. A finished run is skipped, a stopped one
# resumed. The anchor, `page` on the full data and the test set: make train RECIPE=page RUN=...
SCREEN ?= runs/screen
screen: install data
	@run() { name=$$1; shift; out=$(SCREEN)/$$name; \
		if [ -f $$out/results.json ]; then echo "$$name: done"; return 0; fi; \
		if [ -f $$out/config.json ]; then resume=--resume; else resume=; fi; \
		$(PY) fabric_train.py --data $(DATA) --out $$out --seed 0 --holdout 5000 --no-progress-bar \
			$(FLAGS) $$resume "$$@"; }; \
	run page-24 --recipe page && run tricks-24 --recipe tricks && \
	run tricks-24-no-ls --recipe tricks --label-smoothing 0 && \
	run tricks-24-no-flip --recipe tricks --no-alternating-flip && \
	run tricks-24-no-ghost --recipe tricks --ghost-batch 0 && \
	run tricks-24-no-bn --recipe tricks --no-freeze-bn-scale --bn-bias-lr 1 --bn-bias-decay 1 && \
	run tricks-24-no-ema --recipe tricks --ema-decay 0 --lr-floor 0 --floor-epochs 0

# The finished screen runs' records (no weights) into release/screen/<run folder's name>/, then the screen's table
# into docs/training.md: make screen-record RUNS="runs/screen/page-24 runs/screen/tricks-24"
screen-record: install
	@test -n "$(RUNS)" || (echo "usage: make screen-record RUNS='<run folder> ...'" >&2; exit 2)
	for run in $(RUNS); do $(PY) -m s10.seeds $$run --out $(RELEASE)/screen/$$(basename $$run) || exit 1; done
	$(PY) -m s10.report $(RELEASE) --screen docs/training.md

# Keep a recipe's record (config, results, metrics, log of each run; no weights) beside the release, for the
# results' "Recipes compared" table: `make recipe-record NAME=course RUNS=release` before a release of a new recipe.
recipe-record: install
	@test -n "$(NAME)" -a -n "$(RUNS)" || (echo "usage: make recipe-record NAME=<name> RUNS='<run folder> ...'" >&2; exit 2)
	$(PY) -m s10.seeds $(RUNS) --out $(RELEASE)/recipes/$(NAME)
	$(PY) -m s10.report $(RELEASE) --readme README.md --results docs/results.md

report: install
	$(PY) -m s10.report $(RELEASE) --readme README.md --results docs/results.md --recipes docs/training.md \
		--screen docs/training.md

# Copy a finished run's record and model into release/ (no checkpoint), then regenerate from it everything that
# depends on the weights: the OOD detector, the model card, the CAM benchmark, the docs' figures, the README's results
# and the app's screenshots. The seeds' and the earlier recipes' records (release/seeds, release/recipes) stay;
# s10.report refuses seeds of another recipe. Run it on an idle machine (the CAM benchmark's rule reads latencies).
# If the benchmark's rule picks another default than s10/cam.py's, it stops and says what to set there; set it, then
# `make release-docs` finishes (the docs and screenshots follow the page's new default).
release-record: install data browser
	test -f $(RUN)/results.json
	mkdir -p $(RELEASE) && find $(RELEASE) -mindepth 1 -maxdepth 1 ! -name seeds ! -name recipes ! -name screen -exec rm -rf {} +
	cp -r $(RUN)/. $(RELEASE)/
	rm -rf $(RELEASE)/checkpoints $(RELEASE)/tensorboard
	$(PY) -m s10.plots $(RELEASE)  # the curves as today's code draws them, from the run's record
	$(PY) bench/ood.py --data $(DATA) --model $(RELEASE)/model --json bench/results/ood.json \
		--samples docs/images/ood_kinds.png --ship
	$(PY) -m hub.card $(RELEASE)
	$(PY) bench/cam_faithfulness.py --data $(DATA) --json bench/results/cam_faithfulness.json
	$(MAKE) release-docs

release-docs: install browser
	$(PY) bench/cam_faithfulness.py --rule-only bench/results/cam_faithfulness.json
	$(PY) bench/render.py
	$(PY) -m s10.report $(RELEASE) --readme README.md --results docs/results.md
	$(PY) docs/screenshots.py

# Measure the release's committed weights again and write what the evaluation adds since (calibration) into its
# record, model card and README; model.safetensors is not rewritten.
release-recalibrate: install data
	$(PY) -m s10.evaluate $(RELEASE)/model $(DATA) --recalibrate $(RELEASE)
	$(PY) -m hub.card $(RELEASE)
	$(PY) -m s10.report $(RELEASE) --readme README.md --results docs/results.md

# The released model; `make demo S10_MODEL=user/repo` (or any model folder) shows another.
S10_MODEL ?= $(CURDIR)/$(RELEASE)/model
demo: install
	S10_MODEL=$(S10_MODEL) $(PY) space/app.py

# Every benchmark, its results into bench/results/, then into the docs (run it on an otherwise idle machine).
bench: install data
	$(PY) bench/train_throughput.py --data $(DATA) --steps 10 --rounds 3 --json bench/results/train_throughput.json
	$(PY) bench/cam_faithfulness.py --data $(DATA) --json bench/results/cam_faithfulness.json
	$(PY) bench/ood.py --data $(DATA) --json bench/results/ood.json --samples docs/images/ood_kinds.png --ship
	$(PY) bench/app_latency.py --json bench/results/app_latency.json
	$(PY) bench/app_load.py --json bench/results/app_load.json
	$(PY) bench/render.py

# docs/slurm/train-cpu.sbatch submitted to a one-host SLURM cluster (munge, slurmctld, slurmd on loopback; needs root):
# 1 node x 2 tasks, and a requeued job that continues. Installs Debian's slurm-wlm and munge first.
slurm-test: install
	@command -v slurmd >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null)
	conf=$$(tests/slurm/cluster.sh | sed -n 's/^SLURM_CONF=//p') && \
		SLURM_CONF=$$conf HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m slurm tests/test_slurm.py

# The one prepared check for a CUDA machine (bench/gpu_check.py says what it checks): exit 1 on any failure.
gpu-check: install data
	$(PY) bench/gpu_check.py --data $(DATA) --json build/gpu-check.json

# The README's and the Space's pictures: the real app with the released model, in Chromium.
screenshots: install browser
	$(PY) docs/screenshots.py

publish-dry-run: install
	$(PY) -m hub.push $(RELEASE) --dry-run build/model-repo
	$(PY) -m hub.space --dry-run build/space-repo

publish: install
	$(PY) -m hub.push $(RELEASE)
	$(PY) -m hub.space

clean:
	rm -rf build .pytest_cache
