# The two set-up commands of the README:
#   make demo   explain the bundled sample case with a bundled model and print where the results are
#   make test   run the whole test suite
# Both create or refresh the project's virtual environment first (.venv, torch 2.13.0 CPU first).

VENV   ?= .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.slicer-xai-installed
DEMO_CASE  ?= Resources/SampleData/brain-lesion-case1.nii.gz
DEMO_MODEL ?= brain-lesion-classifier
DEMO_OUT   ?= out/demo

.PHONY: demo test venv clean

venv: $(STAMP)

# torch is installed first and pinned: a dependency that asked for plain `torch` would otherwise
# pull a multi-GB CUDA build. Re-run whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e ".[test,viewer]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/slicer-xai explain $(DEMO_CASE) --model $(DEMO_MODEL) --method gradcam --uncertainty tta --out $(DEMO_OUT)

test: $(STAMP)
	$(PYTHON) -m pytest -q

clean:
	rm -rf $(VENV) out .pytest_cache
