# Fresh clone -> `make demo` or `make test`. Only Python 3.11 and make needed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: help venv test demo demo-data demo-multiclass demo-3d bench bench-models bench-inference bench-sliding3d bench-patches bench-augment3d clean

help:
	@echo "make demo   - venv + install, generate demo data, train, test, print where results are"
	@echo "make demo-3d - synthetic anisotropic volumes: plan, preprocess, train a 3D UNet, predict, QC grids"
	@echo "make test   - venv + install if missing, run the whole test suite"
	@echo "make bench  - run the benchmarks under bench/"
	@echo "make bench-inference - sliding window vs raw tile forwards, img/s per inference mode"
	@echo "make bench-sliding3d - 3D UNet: sliding window over a volume vs raw tile forwards, mirroring"
	@echo "make bench-patches - patch loader samples/s against the model's training samples/s"
	@echo "make bench-augment3d - nnU-Net's augmentations, samples/s on a volume patch and an image"
	@echo "make clean  - remove checkpoint/, results/ and data/demo*"

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q

demo-data: venv
	$(PY) -m datasets.synthetic --out data/demo --num-classes 2

demo: demo-data
	$(PY) train.py --config configs/demo.yaml --overwrite
	$(PY) test.py --config configs/demo.yaml
	@echo ""
	@echo "Checkpoints and training curves: checkpoint/demo/  (tensorboard --logdir checkpoint)"
	@echo "Predictions, overlays, metrics:  results/demo/  (overview.png, summary.json, per_image.csv)"

demo-3d: venv
	$(PY) -m datasets.synthetic_volumes --out data/volumes_demo
	$(PY) train.py --config configs/volumes_demo.yaml --overwrite
	$(PY) test.py --config configs/volumes_demo.yaml
	@echo ""
	@echo "Plan, checkpoints, curves:      checkpoint/volumes_demo/  (plan.json; tensorboard --logdir checkpoint)"
	@echo "Predictions and QC grids:       results/volumes_demo/  (qc/<case>.png, per_case.csv, summary.json)"

demo-multiclass: venv
	$(PY) -m datasets.synthetic --out data/demo_multiclass --num-classes 4
	$(PY) train.py --config configs/demo_multiclass.yaml --overwrite
	$(PY) test.py --config configs/demo_multiclass.yaml

bench: venv
	$(PY) bench/train_overhead.py
	$(PY) bench/data_throughput.py

bench-models: venv
	$(PY) bench/models.py

bench-inference: venv
	$(PY) bench/inference.py

bench-sliding3d: venv
	$(PY) bench/sliding3d.py --mirror

bench-patches: venv
	$(PY) bench/patches.py

bench-augment3d: venv
	$(PY) bench/augment3d.py

clean:
	rm -rf checkpoint results data/demo data/demo_multiclass data/volumes_demo
