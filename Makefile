# Two entry points for a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out

LEROBOT_VENV := .venv-lerobot
LEROBOT_STAMP := $(LEROBOT_VENV)/.installed

.PHONY: demo test bench lint docs clean lerobot-venv bench-lerobot

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls gigabytes of CUDA packages.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m shardyard.demo --out $(DEMO_OUT)

test: $(STAMP) $(LEROBOT_STAMP)
	HF_HUB_OFFLINE=1 MPLBACKEND=Agg $(BIN)/python -m pytest -q -n 2 tests

lint: $(STAMP)
	$(BIN)/ruff check .

# The manual, built as tests/test_docs.py builds it.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

bench: $(STAMP) $(LEROBOT_STAMP)
	HF_HUB_OFFLINE=1 MPLBACKEND=Agg $(BIN)/python benchmarks/run_all.py

# The peer library for tests/test_export_lerobot.py and benchmarks/vs_lerobot.py, apart from the project's venv:
# lerobot 0.4.4 (the last on Python 3.11) pins torch < 2.11, so it goes in --no-deps with only what its dataset
# code imports; torchvision (also --no-deps) only for its Python transforms; torchcodec decodes with the system's
# ffmpeg libraries (Debian's `ffmpeg` package, which .ci/run installs).
$(LEROBOT_STAMP):
	test -x $(LEROBOT_VENV)/bin/python || $(PYTHON) -m venv $(LEROBOT_VENV)
	$(LEROBOT_VENV)/bin/python -m pip install -q --upgrade pip
	$(LEROBOT_VENV)/bin/python -m pip install -q torch==2.13.0
	$(LEROBOT_VENV)/bin/python -m pip install -q --no-deps lerobot==0.4.4 torchvision==0.28.0 torchcodec==0.13.0
	$(LEROBOT_VENV)/bin/python -m pip install -q "datasets>=4,<5" "huggingface-hub<0.36" "av>=15,<16" \
		"accelerate>=1.10,<2" "packaging<26" pandas pyarrow pillow jsonlines
	# torchvision's compiled operators need the CUDA torch; without them its import fails on two unguarded fake
	# registrations (nms, qnms). Guard those two the way torchvision guards the others (`_has_ops()`).
	sed -i 's/^@torch.library.register_fake("torchvision::\(q\{0,1\}nms\)")$$/@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() else (lambda f: f))/' \
		"$$($(LEROBOT_VENV)/bin/python -c "import importlib.util as u; print(u.find_spec('torchvision').submodule_search_locations[0])")/_meta_registrations.py"
	$(LEROBOT_VENV)/bin/python -c "from lerobot.datasets.lerobot_dataset import LeRobotDataset; import torchcodec"
	touch $(LEROBOT_STAMP)

lerobot-venv: $(LEROBOT_STAMP)

bench-lerobot: $(STAMP) $(LEROBOT_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/vs_lerobot.py

clean:
	rm -rf $(VENV) $(LEROBOT_VENV) $(DEMO_OUT)
