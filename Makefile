# The two commands: `make serve` and `make test`. Everything else is a helper.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
DEB_PEERS := qemu-utils libnbd-bin python3-libnbd nbdkit libiscsi-bin libiscsi-dev tgt fio
DEB_BUILD := python3-venv

.PHONY: serve test setup peers venv lint bench clean

serve: venv
	$(VENV)/bin/blockyard serve

test: peers venv
	$(VPY) -m pytest -q -p no:cacheprovider
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

setup: peers venv

# Debian peers, installed only when one is missing.
peers:
	@missing=""; for p in $(DEB_PEERS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian peers:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(VENV)/.stamp: pyproject.toml
	@$(PY) -m venv --help >/dev/null 2>&1 || { SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(DEB_BUILD); }
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	@# libnbd's Python binding comes from Debian: expose just that module to the venv.
	@site=$$($(VPY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	mkdir -p $(VENV)/debian-libnbd; \
	for f in /usr/lib/python3/dist-packages/nbd.py /usr/lib/python3/dist-packages/libnbdmod.cpython-311-*.so; do \
	  [ -e "$$f" ] && ln -sf "$$f" $(VENV)/debian-libnbd/; done; \
	echo "$$(pwd)/$(VENV)/debian-libnbd" > "$$site/debian-libnbd.pth"
	touch $@

venv: $(VENV)/.stamp

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

bench: peers venv
	$(VPY) benchmarks/nbd_side_by_side.py

clean:
	rm -rf $(VENV) build *.egg-info
