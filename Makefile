# The two commands: `make serve` and `make test`. Everything runs from the virtual environment in .venv/,
# rebuilt only when pyproject.toml changes.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
FER2013 := ../shared/data/fer2013
MODEL_DIR ?= models/default
# The shipped model: fp16 weights and their card, exported into a verified model directory (no training).
WEIGHTS ?= training/pretrained/fer2013-resnet18.safetensors
# `make train` retrains instead: FER2013 where it is at hand, else the embedded synthetic faces.
MODEL_DATA ?= $(if $(wildcard $(FER2013)/train),$(FER2013),synthetic)
MODEL_EPOCHS ?= $(if $(wildcard $(FER2013)/train),3,6)
# Real faces for export's parity check and for the report's saliency grid, where FER2013 is at hand.
FACES_DATA := $(if $(wildcard $(FER2013)/val),--data $(FER2013))

.PHONY: install test model train serve bench-serve bench-abuse docker image-smoke clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[cpu,serve,train,dev]'
	# MTCNN, the default face detector: facenet-pytorch pins torch<2.3 but runs on ours, so no dependencies
	$(BIN)/pip install --quiet --no-deps facenet-pytorch==2.6.0
	touch $@

test: $(INSTALLED)
	$(BIN)/python -m pytest

model: $(MODEL_DIR)/report.html

$(MODEL_DIR)/manifest.json: | $(INSTALLED)
	$(if $(wildcard $(WEIGHTS)),$(BIN)/python -m training export --weights $(WEIGHTS) --out $(MODEL_DIR) $(FACES_DATA),$(BIN)/python -m training train --data $(MODEL_DATA) --out $(MODEL_DIR) --epochs $(MODEL_EPOCHS))

# The report the service serves at /model/report (order-only: storing it rewrites the manifest).
$(MODEL_DIR)/report.html: | $(MODEL_DIR)/manifest.json
	$(BIN)/python -m training report --model $(MODEL_DIR) $(FACES_DATA)

train: $(INSTALLED)
	$(BIN)/python -m training train --data $(MODEL_DATA) --out $(MODEL_DIR) --epochs $(MODEL_EPOCHS)
	$(BIN)/python -m training report --model $(MODEL_DIR) $(FACES_DATA)

serve: $(INSTALLED) $(MODEL_DIR)/report.html
	$(BIN)/python -m service --model $(MODEL_DIR)

# Build the CPU image and run it as an operator would (docker, else podman); needs an engine and ~15 min.
image-smoke: $(INSTALLED) $(MODEL_DIR)/report.html
	docker/smoke.sh

bench-serve: $(INSTALLED) $(MODEL_DIR)/manifest.json
	$(BIN)/python -m bench.serve --model $(MODEL_DIR)

bench-abuse: $(INSTALLED) $(MODEL_DIR)/manifest.json
	$(BIN)/python -m bench.abuse --model $(MODEL_DIR)

docker: $(MODEL_DIR)/report.html
	@command -v docker >/dev/null || { echo "make docker needs Docker (a client and a running engine)"; exit 1; }
	docker build -f docker/Dockerfile.cpu --build-arg MODEL_SOURCE=$(MODEL_DIR) -t fer-explain:cpu .
	docker build -f docker/Dockerfile.gpu --build-arg MODEL_SOURCE=$(MODEL_DIR) -t fer-explain:gpu .

clean:
	rm -rf $(VENV) models runs
