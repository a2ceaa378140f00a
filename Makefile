# mailmag: `make run` starts the service on its embedded defaults, `make test` runs the suite.
# Both create .venv with the versions pinned in requirements.lock on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock
# What `make run` needs: mailmag and its dependencies, none of the test tools.
RUN_STAMP := $(VENV)/.installed-run
# What `make test` needs besides: the dev extra (pytest, Playwright, schemathesis, mypy, ruff).
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: install run test lint typecheck unit lock clean messages swagger-ui bench bench-postgresql soak

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): pyproject.toml setup.py requirements.lock | $(BIN)/python
	$(PIP) -e .
	touch $@

$(DEV_STAMP): pyproject.toml setup.py requirements.lock | $(BIN)/python
	$(PIP) -e '.[dev]'
	touch $@ $(RUN_STAMP)

# The development environment: everything, as `make test` installs it.
install: $(DEV_STAMP)

run: $(RUN_STAMP)
	$(BIN)/mailmag migrate
	$(BIN)/mailmag serve

test: lint typecheck unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest

# Re-pin every dependency after changing pyproject.toml (run on a fresh venv).
lock: install
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^mailmag' > requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Extract translatable messages and merge them into the catalogs (then translate the new ones).
messages: install
	mkdir -p build
	$(BIN)/pybabel extract -F babel.cfg -k _ -k N_ --no-location --omit-header -o build/messages.pot .
	$(BIN)/pybabel update -i build/messages.pot -d subscriptions/locale --no-wrap --omit-header

# Vendor Swagger UI (the npm package swagger-ui-dist) for /docs, which mailmag serves itself:
# `make swagger-ui SWAGGER_UI=<version>` replaces templates/static/swagger_ui.
SWAGGER_UI ?= $(shell cat templates/static/swagger_ui/VERSION)
swagger-ui:
	rm -rf build/swagger-ui && mkdir -p build/swagger-ui
	cd build/swagger-ui && npm pack --silent swagger-ui-dist@$(SWAGGER_UI) >/dev/null && tar -xzf *.tgz
	cd build/swagger-ui/package && cp LICENSE NOTICE favicon-32x32.png swagger-ui.css \
		swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt ../../../templates/static/swagger_ui/
	echo $(SWAGGER_UI) > templates/static/swagger_ui/VERSION

# The benchmark (installs smtp-sink, smtp-source and wrk from Debian when missing); results in
# bench/results/. BENCH_ARGS="--full" for 1,000,000 subscribers.
bench: install
	$(BIN)/python bench/run.py $(BENCH_ARGS)

bench-postgresql: install
	$(BIN)/python bench/run.py --db postgresql --out latest-postgresql $(BENCH_ARGS)

# The reliability suite at full size (CI runs the quick sizes inside `make test`); figures in
# bench/results/reliability-soak.json.
soak: install
	MAILMAG_SOAK=1 $(BIN)/pytest tests/reliability -p no:cacheprovider -o faulthandler_timeout=0
