# Two commands: `make demo` and `make test`. Each builds what it needs itself.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The extras installed into .venv: tests and the demo need the embedded broker ('broker').
EXTRAS ?= test,broker
# The stamp names the extras, so asking for other ones reinstalls.
comma  := ,
STAMP  := $(VENV)/.sabot-installed-$(subst $(comma),-,$(EXTRAS))
SOURCES := $(shell find sabot -name '*.pyx' -o -name '*.pxd' -o -name '*.h') setup.py pyproject.toml
DURATION ?= 30
PYTEST_ARGS ?=

.PHONY: test demo install build bench clean kcat

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# The editable install compiles every Cython module in place; it reruns when a source changes
# (pyproject.toml included: a new dependency or extra).
$(STAMP): $(PY) $(SOURCES)
	@# this checkout was installed under the distribution name 'sabot' before it became
	@# 'sabot-marketdata': drop that stale editable install from an existing .venv
	@if $(PY) -m pip show --quiet sabot 2>/dev/null; then $(PY) -m pip uninstall --quiet -y sabot; fi
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.sabot-installed*
	@touch $(STAMP)

install: $(STAMP)

build: $(STAMP)

test: build kcat
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: build
	$(PY) -m sabot demo --duration $(DURATION)

bench: build
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/compare_peers.py
	$(PY) benchmarks/end_to_end.py --records 1000000

clean:
	rm -rf build $(VENV) sabot/**/*.so sabot/**/*.c

# kcat (Debian package) reads topics back in the Kafka tests; they skip when it cannot be installed.
kcat:
	@command -v kcat >/dev/null || apt-get install -y kcat || (apt-get update && apt-get install -y kcat) \
		|| echo "kcat could not be installed; tests that need it will skip"
