# Two commands on a fresh machine (see README): `make demo` and `make test`.
# Each creates the virtual environment it needs on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU build of PyTorch (a local wheel on our machines). GPU users: see README.
TORCH  ?= torch==2.13.0

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/hsfuse demo --out-dir demo_out --overwrite

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/bench_fuse.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
