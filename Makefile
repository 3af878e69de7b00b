# Two set-up commands for a fresh machine: `make run` and `make test`.
# The dependencies and every extra are installed (from pyproject.toml), not the project
# itself: code always runs from the checkout it sits in, so an agent's worktree runs its own
# copy.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: run test clean sandbox browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
	  print('\n'.join(p['dependencies'] + sum(p['optional-dependencies'].values(), [])))" \
	  > $(VENV)/requirements.txt
	$(PY) -m pip install -q -r $(VENV)/requirements.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# Trials run inside bubblewrap (Debian/Ubuntu package `bubblewrap`): installed here when
# missing and we may (root with apt-get); otherwise the charter's default refuses to run
# trials and says how to install it.
sandbox:
	@command -v bwrap >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && apt-get install -y -qq bubblewrap) >/dev/null; \
	  else echo "warning: bubblewrap (bwrap) is not installed: trials need it (sudo apt-get install bubblewrap)"; fi; }

# The report's browser test opens it in headless Chromium (Debian package `chromium`):
# installed here when missing and we may; otherwise that test skips and says why.
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null; \
	  else echo "warning: chromium is not installed: the browser tests skip (sudo apt-get install chromium)"; fi; }

run: $(STAMP) sandbox
	$(PY) -m agent.main run --experiment=experiments/mnist1d_mlp.py --proposer=heuristic

test: $(STAMP) sandbox browser
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs
