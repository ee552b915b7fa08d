# keel build.
#
#   make            build build/keel, build/libkeel.a, build/libkeel.so, keel.pc
#   make run        install missing deps, build, start a local cluster (keel local)
#   make test       install missing deps, build, run every test (unit, fuzz smoke, e2e)
#   make asan       the whole suite under AddressSanitizer + UBSan (build/asan)
#   make sim        the Raft simulator for SEEDS seeds of STEPS steps (replsim: replication)
#   make fuzz       run each libFuzzer target for FUZZ_TIME seconds (default 300)
#
# Every src/*.c except main.c goes into build/libkeelcore.a (internal, used by
# the binary and the unit tests). libkeel (the public client library) is the
# client plus the codec it needs, exporting only keel_* symbols.

BUILD   ?= build
CC      ?= cc
SAN     ?=
OPT     ?= -O2
PKGS    := libuv lmdb libxxhash libedit

CFLAGS  += -std=c11 -D_GNU_SOURCE $(OPT) -g -Wall -Wextra -Werror -Wshadow -Wno-missing-field-initializers \
           -fPIC -fvisibility=hidden -Isrc -Iinclude
LDLIBS  += -luv -llmdb -lxxhash -ledit -lpthread -lm
ifeq ($(SAN),1)
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif

PORT    ?= 2012
DATA    ?= keel-local

CORE_SRC := $(filter-out src/main.c,$(wildcard src/*.c))
CORE_OBJ := $(patsubst src/%.c,$(BUILD)/obj/%.o,$(CORE_SRC))
LIB_SRC  := src/client.c src/kroute.c src/json.c src/resp.c src/buf.c
LIB_OBJ  := $(patsubst src/%.c,$(BUILD)/obj/%.o,$(LIB_SRC))
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))
FUZZ_SRC := $(wildcard fuzz/fuzz_*.c)
FUZZ_BIN := $(patsubst fuzz/%.c,$(BUILD)/fuzz/%,$(FUZZ_SRC))
FUZZ_TIME ?= 300
FUZZ_SMOKE ?= 10
PYTEST  := /usr/bin/python3 -m pytest
SIM_SRC := $(wildcard tests/sim/*.c)
REPLSIM_SRC := $(wildcard tests/replsim/*.c)
CLUSTER_TESTS := $(wildcard tests/cluster/test_*.py)
CHAOS_TESTS := $(wildcard tests/chaos/test_*.py)
SEED    ?= 1
TIME    ?= 60
RUNS    ?= 10
SEEDS   ?= 500
STEPS   ?= 2000

.PHONY: all run run-standalone test unit fuzz-smoke fuzz e2e cluster asan deps clean format bench sim sim-smoke \
        replsim replsim-smoke chaos chaos-many chaos-smoke

all: $(BUILD)/keel $(BUILD)/libkeel.a $(BUILD)/libkeel.so $(BUILD)/keel.pc

deps:
	@sh scripts/deps.sh

$(BUILD)/obj/%.o: src/%.c $(wildcard src/*.h) include/keel.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libkeelcore.a: $(CORE_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/keel: $(BUILD)/obj/main.o $(BUILD)/libkeelcore.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/libkeel.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/libkeel.so: $(LIB_OBJ)
	$(CC) $(LDFLAGS) -shared -Wl,-soname,libkeel.so.0 -o $@ $^

$(BUILD)/keel.pc: keel.pc.in
	sed -e 's|@PREFIX@|$(abspath $(BUILD))|' $< > $@

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libkeelcore.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libkeelcore.a -lcmocka $(LDLIBS)

# libFuzzer targets need clang; they always build with ASan + UBSan. The core
# is compiled once for them (fuzzer-no-link) and each target links against it.
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -Isrc -Iinclude
FUZZ_OBJ := $(patsubst src/%.c,$(BUILD)/fuzzobj/%.o,$(CORE_SRC))

$(BUILD)/fuzzobj/%.o: src/%.c $(wildcard src/*.h)
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link,address,undefined -c $< -o $@

$(BUILD)/libfuzzcore.a: $(FUZZ_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/fuzz/%: fuzz/%.c $(BUILD)/libfuzzcore.a
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer,address,undefined -o $@ $< $(BUILD)/libfuzzcore.a $(LDLIBS)

# The deterministic Raft simulator (tests/sim): exit 0 no violation, 1 a
# violation (seed printed), anything else a crash or usage error.
$(BUILD)/sim: $(SIM_SRC) $(wildcard tests/sim/*.h) $(BUILD)/libkeelcore.a
	$(CC) $(CFLAGS) $(LDFLAGS) -Itests/sim -o $@ $(SIM_SRC) $(BUILD)/libkeelcore.a $(LDLIBS)

sim: $(BUILD)/sim
	$(BUILD)/sim --seeds $(SEEDS) --steps $(STEPS)

# A bounded batch, and proof that the checker catches a broken commit rule.
sim-smoke: $(BUILD)/sim
	$(BUILD)/sim --seeds 500 --steps 2000
	@$(BUILD)/sim --seeds 200 --steps 2000 --break-commit-rule >$(BUILD)/sim-broken.log 2>&1; rc=$$?; \
	  if [ $$rc -eq 1 ]; then echo "sim: checker caught the broken commit rule (expected): $$(grep -m1 VIOLATION $(BUILD)/sim-broken.log)"; \
	  else echo "sim: expected a violation with --break-commit-rule, got exit $$rc"; cat $(BUILD)/sim-broken.log | tail -20; exit 1; fi

# The deterministic replication simulator (tests/replsim), same conventions.
$(BUILD)/replsim: $(REPLSIM_SRC) $(wildcard tests/replsim/*.h) $(BUILD)/libkeelcore.a
	$(CC) $(CFLAGS) $(LDFLAGS) -Itests/replsim -o $@ $(REPLSIM_SRC) $(BUILD)/libkeelcore.a $(LDLIBS)

replsim: $(BUILD)/replsim
	$(BUILD)/replsim --seeds $(SEEDS) --steps $(STEPS)

replsim-smoke: $(BUILD)/replsim
	$(BUILD)/replsim --seeds 300 --steps 2000
	@$(BUILD)/replsim --seeds 200 --steps 2000 --break-commit-rule >$(BUILD)/replsim-broken.log 2>&1; rc=$$?; \
	  if [ $$rc -eq 1 ]; then echo "replsim: checker caught the broken commit rule (expected): $$(grep -m1 VIOLATION $(BUILD)/replsim-broken.log)"; \
	  else echo "replsim: expected a violation with --break-commit-rule, got exit $$rc"; tail -20 $(BUILD)/replsim-broken.log; exit 1; fi
	@$(BUILD)/replsim --seeds 200 --steps 2000 --break-send-order >$(BUILD)/replsim-order.log 2>&1; rc=$$?; \
	  if [ $$rc -eq 1 ]; then echo "replsim: checker caught APPENDs sent before they were durable (expected): $$(grep -m1 VIOLATION $(BUILD)/replsim-order.log)"; \
	  else echo "replsim: expected a violation with --break-send-order, got exit $$rc"; tail -20 $(BUILD)/replsim-order.log; exit 1; fi

unit: $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t; done

fuzz-smoke: $(FUZZ_BIN)
	@set -e; for f in $(FUZZ_BIN); do n=$$(basename $$f); mkdir -p $(BUILD)/corpus/$$n; \
	  echo "== $$n ($(FUZZ_SMOKE)s)"; \
	  $$f -max_total_time=$(FUZZ_SMOKE) -print_final_stats=0 -artifact_prefix=$(BUILD)/ \
	      $(BUILD)/corpus/$$n fuzz/seeds/$$n 2>&1 | tail -n 2; done

fuzz: $(FUZZ_BIN)
	@set -e; for f in $(FUZZ_BIN); do n=$$(basename $$f); mkdir -p $(BUILD)/corpus/$$n; \
	  echo "== $$n ($(FUZZ_TIME)s)"; \
	  $$f -max_total_time=$(FUZZ_TIME) -artifact_prefix=$(BUILD)/ $(BUILD)/corpus/$$n fuzz/seeds/$$n; done

e2e: $(BUILD)/keel $(BUILD)/libkeel.so
	KEEL_BIN=$(abspath $(BUILD)/keel) $(PYTEST) -q tests/e2e

# libkeel's cluster-mode probe (tests/cluster/test_libkeel_cluster.py),
# linked against the public library alone.
$(BUILD)/tests/keel_cluster_probe: tests/cluster/keel_cluster_probe.c $(BUILD)/libkeel.a include/keel.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libkeel.a

# Multi-process cluster tests: coordinators and daemons on their own loopback
# addresses, with kill -9, SIGSTOP and partitions.
cluster: $(BUILD)/keel $(BUILD)/tests/keel_cluster_probe
	KEEL_BIN=$(abspath $(BUILD)/keel) $(PYTEST) -q tests/cluster

# Jepsen-style runs (tests/chaos): one seeded run, or a batch of seeds.
chaos: $(BUILD)/keel
	KEEL_BIN=$(abspath $(BUILD)/keel) /usr/bin/python3 tests/chaos/runner.py --seed $(SEED) --time $(TIME)

chaos-many: $(BUILD)/keel
	KEEL_BIN=$(abspath $(BUILD)/keel) /usr/bin/python3 tests/chaos/runner.py --runs $(RUNS) --time $(TIME)

chaos-smoke: $(BUILD)/keel
	KEEL_BIN=$(abspath $(BUILD)/keel) $(PYTEST) -q tests/chaos

test: deps all unit $(if $(SIM_SRC),sim-smoke) $(if $(REPLSIM_SRC),replsim-smoke) fuzz-smoke e2e \
      $(if $(CLUSTER_TESTS),cluster) $(if $(CHAOS_TESTS),chaos-smoke)
	@echo "make test: all passed"

# ASan's quarantine keeps up to 256 MB of freed memory by default, which the
# memory-bound tests would count as the server's: keep it small.
asan:
	ASAN_OPTIONS=quarantine_size_mb=8 $(MAKE) BUILD=build/asan SAN=1 OPT=-O1 all unit e2e \
	    $(if $(CLUSTER_TESTS),cluster)

# A local cluster: 3 coordinators (1982..) and 3 daemons (2012..), data in
# $(DATA)/; Ctrl-C stops it cleanly. `make run-standalone` runs the
# single-process server instead.
run: deps all
	$(BUILD)/keel local -D $(DATA)

run-standalone: deps all
	@mkdir -p $(DATA)-standalone
	@echo "keel: serving on 127.0.0.1:$(PORT), data in $(DATA)-standalone/ (Ctrl-C stops)"
	$(BUILD)/keel standalone -f -p $(PORT) -D $(DATA)-standalone

bench: all
	bench/redis_compare.sh

format:
	clang-format -i src/*.c src/*.h include/*.h tests/unit/*.c fuzz/*.c

clean:
	rm -rf build
