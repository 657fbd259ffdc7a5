# ringchat: build, run, test and install.  `make help` lists the targets.

CARGO   ?= cargo
PREFIX  ?= /usr/local
DESTDIR ?=

BINDIR    := $(DESTDIR)$(PREFIX)/bin
DOCDIR    := $(DESTDIR)$(PREFIX)/share/doc/ringchat
UNITDIR   := $(DESTDIR)/etc/systemd/system
CONFDIR   := $(DESTDIR)/etc/ringchat

BINS      := ringchatd ringchat ringchat-load
RELEASE   := target/release
UNIT      := systemd/ringchatd@.service
EXAMPLE   := systemd/ringchatd.toml.example

# Local demo cluster (`make run`): 3 nodes, clients on 127.0.0.1:7070-7072, peers on
# 127.0.0.1:7170-7172, data and logs under $(RUN_DATA_DIR) (see scripts/cluster.sh).
RUN_DATA_DIR ?= ./ringchat-data

.PHONY: all build run test lint loadtest bench-closed bench-open bench-idle \
        install uninstall verify-units clean help

all: build

help:
	@echo "make build         release build of ringchatd, ringchat, ringchat-load"
	@echo "make run           build, then run a local 3-node cluster on 127.0.0.1:7070-7072 (foreground)"
	@echo "make test          run the test suite (cargo test --all-targets)"
	@echo "make sim           deterministic cluster simulation: SEEDS=2000 swarm seeds healing everything, LIVENESS=500 in the core liveness mode (NODES=3, START=0, SIM_FLAGS=)"
	@echo "make fuzz          the decoder properties (network and disk bytes), CASES=20000 cases each"
	@echo "make lint          cargo fmt --check and clippy -D warnings"
	@echo "make loadtest      every load scenario (scripts/bench.sh all)"
	@echo "make bench-closed  closed-loop load scenario"
	@echo "make bench-cluster closed-loop scenario on a 3-node cluster"
	@echo "make bench-open    open-loop (fixed rate) load scenario"
	@echo "make bench-idle    many idle connections scenario"
	@echo "make bench-commit  file vs memory storage on 3 nodes: throughput, CPU, latency (scripts/bench-durable.sh)"
	@echo "make bench-restart SIGKILL and restart a node holding MESSAGES=1000000 messages: restart time"
	@echo "make bench-catchup a wiped follower catches up MESSAGES=1000000: time, leader's added latency"
	@echo "make bench-partition (as root) a follower cut silently for CUTS=\"1 8 30\" s (network namespaces): heal -> first ack"
	@echo "make verify-units  systemd-analyze verify the systemd unit"
	@echo "make install       install binaries, unit and example config (PREFIX=$(PREFIX) DESTDIR=)"
	@echo "make uninstall     remove what install put in place (configs are kept)"
	@echo "make clean         cargo clean"

build:
	$(CARGO) build --release --bins

run: build
	BIN_DIR=$(RELEASE) DATA_DIR=$(RUN_DATA_DIR) scripts/cluster.sh

test:
	$(CARGO) test --all-targets

# Deterministic cluster simulation over many seeds, in release: `make sim SEEDS=10000 NODES=5`.
# Each seed picks its own fault mix (swarm testing; SIM_FLAGS=--no-swarm for the one fixed mix);
# SEEDS seeds heal everything after the faults, LIVENESS more run the core liveness mode (a
# random majority healed, every other node failed for good). Both defaults together take about
# 30 s on 2 idle cores (80 s on a loaded machine). A failing seed is printed with the command
# that replays it.
SEEDS ?= 2000
LIVENESS ?= 500
START ?= 0
NODES ?= 3
SIM_JOBS ?= 2
SIM_FLAGS ?=
.PHONY: sim
sim:
	$(CARGO) run --release --bin ringchat-sim -- --seeds $(SEEDS) --liveness $(LIVENESS) \
	  --start $(START) --nodes $(NODES) --jobs $(SIM_JOBS) $(SIM_FLAGS)

# The properties that feed hostile bytes to every decoder of network and disk input
# (src/codec/tests/fuzz.rs), in release, with CASES cases each: `make fuzz CASES=100000`.
# Cases run in a child process, so one that aborts (a huge allocation failing) or hangs for
# 10 s is reported with its smallest input instead of ending the run.
# Coverage-guided fuzzing (cargo-fuzz) needs nightly Rust, which this machine cannot fetch.
CASES ?= 20000
.PHONY: fuzz
fuzz:
	PROPTEST_CASES=$(CASES) PROPTEST_FORK=true PROPTEST_TIMEOUT=10000 \
	  $(CARGO) test --release --lib codec::tests::fuzz::

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

loadtest:
	scripts/bench.sh all

bench-closed:
	scripts/bench.sh closed

bench-open:
	scripts/bench.sh open

bench-idle:
	scripts/bench.sh idle

# The closed scenario on a fresh 3-node cluster, members on every node, CPU summed.
.PHONY: bench-cluster
bench-cluster:
	scripts/bench.sh cluster

# Kills the leader of a local 3-node cluster 20 times; failover time, lost and duplicates.
.PHONY: bench-failover
bench-failover:
	scripts/failover.sh

# Durable storage (scripts/bench-durable.sh; knobs are its environment variables, e.g.
# `make bench-restart MESSAGES=50000`, see `scripts/bench-durable.sh --help`).
.PHONY: bench-commit bench-restart bench-catchup
bench-commit:
	scripts/bench-durable.sh commit

bench-restart:
	scripts/bench-durable.sh restart

bench-catchup:
	scripts/bench-durable.sh catchup

# A follower cut off by a silent partition (packets dropped, no RST) in network namespaces:
# time from the heal to its client's first ack (scripts/bench-partition.sh; needs root and nft
# or iptables; knobs are its environment variables, e.g. `sudo make bench-partition CUTS=8
# ROUNDS=5`). Builds nothing, so that cargo does not run as root: `make build` first.
.PHONY: bench-partition
bench-partition:
	scripts/bench-partition.sh

# Builds only if a binary is missing, so that `sudo make install` after `make build` does not
# run cargo as root. The unit's paths follow PREFIX. An existing example config is kept.
install:
	@for b in $(BINS); do \
	  if [ ! -x $(RELEASE)/$$b ]; then $(MAKE) build || exit 1; break; fi; \
	done
	install -d $(BINDIR) $(UNITDIR) $(CONFDIR) $(DOCDIR)
	for b in $(BINS); do install -m 0755 $(RELEASE)/$$b $(BINDIR)/$$b; done
	sed -e 's|/usr/local/bin/|$(PREFIX)/bin/|g' \
	    -e 's|/usr/local/share/doc/|$(PREFIX)/share/doc/|g' \
	    $(UNIT) > $(UNITDIR)/ringchatd@.service.tmp
	chmod 0644 $(UNITDIR)/ringchatd@.service.tmp
	mv -f $(UNITDIR)/ringchatd@.service.tmp $(UNITDIR)/ringchatd@.service
	@if [ -e $(CONFDIR)/ringchatd.toml.example ]; then \
	  echo "keeping existing $(CONFDIR)/ringchatd.toml.example"; \
	else \
	  echo "install -m 0644 $(EXAMPLE) $(CONFDIR)/ringchatd.toml.example"; \
	  install -m 0644 $(EXAMPLE) $(CONFDIR)/ringchatd.toml.example; \
	fi
	install -m 0644 README.md docs/PROTOCOL.md docs/CLUSTER.md $(DOCDIR)/
	@echo
	@echo "Installed. To run node1 under systemd:"
	@echo "  cp /etc/ringchat/ringchatd.toml.example /etc/ringchat/node1.toml   # then edit id, listen"
	@echo "  systemctl daemon-reload && systemctl enable --now ringchatd@node1"

uninstall:
	for b in $(BINS); do rm -f $(BINDIR)/$$b; done
	rm -f $(UNITDIR)/ringchatd@.service
	rm -rf $(DOCDIR)
	@echo "kept $(CONFDIR) (configuration) and /var/lib/ringchat (data)"

# systemd-analyze verify wants ExecStart's binary to exist, and a template needs an instance.
# The unit is checked unchanged inside a scratch root (--root) that holds it and a stub
# /usr/local/bin/ringchatd, so nothing needs to be built or installed. systemd < 250 lacks
# --root/--recursive-errors for verify: there the unit is checked with ExecStart rewritten to
# the stub's path.
verify-units:
	@command -v systemd-analyze >/dev/null || { \
	  echo "verify-units: systemd-analyze not found (apt-get install systemd)" >&2; exit 1; }
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	mkdir -p "$$tmp/usr/local/bin" "$$tmp/etc/systemd/system"; \
	printf '#!/bin/sh\nexit 0\n' > "$$tmp/usr/local/bin/ringchatd"; \
	chmod 0755 "$$tmp/usr/local/bin/ringchatd"; \
	if systemd-analyze --help 2>/dev/null | grep -q -- '--recursive-errors'; then \
	  cp $(UNIT) "$$tmp/etc/systemd/system/ringchatd@.service"; \
	  echo "systemd-analyze verify --recursive-errors=no --root=$$tmp ringchatd@demo.service"; \
	  systemd-analyze verify --recursive-errors=no --root="$$tmp" ringchatd@demo.service; \
	else \
	  sed "s|/usr/local/bin/ringchatd|$$tmp/usr/local/bin/ringchatd|" $(UNIT) \
	    > "$$tmp/ringchatd@demo.service"; \
	  echo "systemd-analyze verify $$tmp/ringchatd@demo.service"; \
	  systemd-analyze verify "$$tmp/ringchatd@demo.service"; \
	fi; \
	echo "verify-units: $(UNIT) OK"

clean:
	$(CARGO) clean
