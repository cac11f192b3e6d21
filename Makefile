# asr-kd: two commands.
#   make demo   synthesize the demo corpus, train teacher, label, distill a student, print the results table
#   make test   lint (ruff, pyproject.toml) and run the test suite
# Both create/refresh .venv when pyproject.toml changes and install the Debian tools they need
# (espeak-ng, flite, sox, sctk) when missing and running as root.
# RAY_AUTH_MODE is left to the user: local Ray runs bind loopback and use a per-run token (README,
# Security); the tests opt in to RAY_AUTH_MODE=disabled themselves where they need to.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.asr-kd-installed
DEBIAN_TOOLS := espeak-ng flite sox sctk
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: demo test system-tools venv clean

demo: system-tools venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash recipes/synth/run.sh

test: system-tools venv
	$(VENV)/bin/ruff check asr_kd data_prep tools tests recipes
	$(VENV)/bin/python -m pytest -q -m "not slow"

system-tools:
	@missing=""; \
	for t in espeak-ng flite sox; do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	[ -x /usr/lib/sctk/bin/sclite ] || command -v sclite >/dev/null || missing="$$missing sctk"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_TOOLS) >/dev/null; \
	  else \
	    echo "missing system tools:$$missing — run: sudo apt-get install $(DEBIAN_TOOLS)"; exit 1; \
	  fi; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (asr-kd pins Python 3.11)"; exit 1; }
	[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	@echo "installing asr-kd and its pinned dependencies into $(VENV) (log: $(VENV)/pip.log)"
	$(VENV)/bin/python -m pip install -e '.[test,hf]' > $(VENV)/pip.log 2>&1 \
	  || { grep -v "^WARNING: Location" $(VENV)/pip.log | tail -30; exit 1; }
	$(VENV)/bin/python -c "import asr_kd, torch, torchaudio, speechbrain, ray, transformers" \
	  || { echo "installation into $(VENV) failed; see the pip output above"; exit 1; }
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
