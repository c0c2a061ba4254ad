# The two set-up commands of the README:
#   make demo   the browser viewer on the bundled demo case and model (prints the address to open)
#   make test   run the whole test suite (installs Debian's chromium, dicom3tools and orthanc for the tests if missing)
# Both create or refresh the project's virtual environment first (.venv, torch 2.13.0 CPU first).

VENV   ?= .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.slicer-xai-installed
PORT   ?= 8080

.PHONY: demo explain-demo test bench system-packages venv clean

venv: $(STAMP)

# nnU-Net v2 and its own libraries without their dependency lists: dynamic-network-architectures asks for timm (and
# so a torchvision that does not match this torch) for transformer architectures nnU-Net does not plan by default,
# and batchgenerators for unittest2, whose PyPI "argparse" 1.4 would shadow the standard library's where
# site-packages come first (Slicer's python -S). What they need is the extra "nnunet".
NNUNET := nnunetv2==2.8.1 dynamic-network-architectures==0.4.4 acvl-utils==0.2.6 batchgenerators==0.25.5 \
	batchgeneratorsv2==0.3.6

# torch is installed first and pinned: a dependency that asked for plain `torch` would otherwise
# pull a multi-GB CUDA build. Re-run whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e ".[test,viewer,nnunet]"
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps $(NNUNET)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/slicer-xai viewer --port $(PORT)

# The same case from the command line: maps and result.json in out/demo.
explain-demo: $(STAMP)
	$(VENV)/bin/slicer-xai explain XAIExplain/XAIExplainLib/Resources/SampleData/brain-lesion-case1.nii.gz --model brain-lesion-classifier \
		--method gradcam --uncertainty tta --out out/demo

# Debian packages the tests drive: chromium for the browser tests (playwright cannot download browsers
# here), dicom3tools, whose dciodvfy validates every DICOM object the tests write, and Orthanc with its
# DICOMweb plugin, the PACS of the round-trip tests (started by the tests themselves, on loopback).
system-packages:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v dciodvfy >/dev/null 2>&1 || missing="$$missing dicom3tools"; \
	[ -x /usr/sbin/Orthanc ] || missing="$$missing orthanc"; \
	[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing="$$missing orthanc-dicomweb"; \
	[ -z "$$missing" ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; }

test: $(STAMP) system-packages
	$(PYTHON) -m pytest -q

# The README's explanation-bench tables, and the task catalogue's evidence (XAIExplain/XAIExplainLib/Resources/Tasks/Bench), from
# the three demo models on freshly generated cases: every metric on 20 cases (about 42 minutes on 2 cores),
# then the targets' metrics (pointing game, mass in the lesion, randomisation check) on 120 cases, whose
# intervals are narrow enough to decide a 0.90 target (about 12 minutes); the latter is the evidence.
BENCH_ARGS ?= --synth 20 --seed 777 --methods gradcam,gradcampp,gradient --sanity-cases 3
LOCALISATION_ARGS ?= --synth 120 --seed 777 --methods gradcam,gradcampp,gradient --sanity-cases 3 \
	--no-faithfulness --no-stability
BENCH_MODELS ?= brain-lesion-classifier brain-lesion-segmenter chest-nodule-classifier
bench: $(STAMP)
	@for model in $(BENCH_MODELS); do \
	  $(VENV)/bin/slicer-xai bench --model $$model $(BENCH_ARGS) --out out/bench/$$model || exit 1; \
	  $(VENV)/bin/slicer-xai bench --model $$model $(LOCALISATION_ARGS) --out out/bench-120/$$model || exit 1; \
	  cp out/bench-120/$$model/bench.json XAIExplain/XAIExplainLib/Resources/Tasks/Bench/$$model.json; \
	done

clean:
	rm -rf $(VENV) out .pytest_cache
