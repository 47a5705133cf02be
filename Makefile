# Two commands: `make demo` (explain a model, write a heatmap) and `make test` (the whole suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
LXT_VENV := .venv-lxt

.PHONY: demo test clean browser lxt-venv

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[torch,test,demo,audit,keras,jax,dynamo,text,timm]'
	touch $@

# tests/test_web.py drives Debian's Chromium and runs Node.js: as root (CI) they are installed
# with apt-get when missing; where they cannot be, those tests skip and say why.
browser:
	@if [ ! -x /usr/bin/chromium ] || ! command -v npm >/dev/null; then \
	  if [ "$$CI" = true ] || [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	      $$(command -v npm >/dev/null || echo nodejs npm) || echo "could not install chromium/nodejs: tests/test_web.py will skip"; \
	  else echo "no /usr/bin/chromium or npm and not root: tests/test_web.py will skip"; fi; \
	fi

# onnxruntime-web/-node for web/ (its postinstall copies the WASM files to web/vendor/);
# ONNXRUNTIME_NODE_INSTALL=skip: the CPU binaries ship in the package, no CUDA download.
web/node_modules/.package-lock.json: web/package.json web/package-lock.json | browser
	-cd web && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund

# The LXT oracle's own environment (tests/test_lxt.py): LXT 2.1 needs transformers 4.52.4.
$(LXT_VENV)/.installed: tests/oracles/make_lxt_venv.sh
	PYTHON=$(PYTHON) bash tests/oracles/make_lxt_venv.sh $(LXT_VENV)

lxt-venv: $(LXT_VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/lrp-onnx demo --out demo_out

test: $(VENV)/.installed $(LXT_VENV)/.installed web/node_modules/.package-lock.json
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(LXT_VENV) demo_out web/node_modules web/vendor
