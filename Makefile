# The course's two commands (see README.md):
#   make course   set everything up and open the lessons in JupyterLab
#   make test     set everything up and run every test: unit tests, the browser test,
#                 and every notebook under nbval
# Both install into a virtual environment in .venv (made on first use).
# TORCH picks the PyTorch build: the default is the CPU build; `make course TORCH=torch`
# installs PyPI's default build instead (with CUDA on Linux), for a GPU.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

.PHONY: course test install-course install-test chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"

install-course: $(BIN)/python
	$(BIN)/pip install --quiet -e ".[course]"

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test]"

# Serve the repository root, so that the lessons' ../img/*.png diagrams resolve, and open the
# lessons' folder. Each kernel still runs in its notebook's folder (notebooks/, where runs/ lives).
course: install-course
	$(BIN)/jupyter lab --ip=127.0.0.1 $(ROOT_FLAG) --ServerApp.root_dir=. \
	  --LabApp.default_url=/lab/tree/notebooks

# The browser test drives JupyterLab in Debian's Chromium (Playwright cannot download a browser).
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: install Debian's chromium (sudo apt-get install chromium)" \
	    "to run the browser test"; fi; \
	fi

test: install-test chromium
	$(BIN)/python -m pytest tests notebooks --nbval-lax -p no:cacheprovider
