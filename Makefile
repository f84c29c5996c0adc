# prefixd — every entry point: deps, build, run, test, bench, sanitizers.
#
#   make            build build/prefixd and build/libprefixd.a
#   make deps       install the Debian packages the project needs (only missing ones)
#   make run        deps + build + start on the shipped model
#   make test       deps + build + every test (unit, end-to-end)
#   make asan       the test suite under AddressSanitizer + UndefinedBehaviorSanitizer
#   make bench      speed figures next to this machine's own sgemm peak and bandwidth

CC      ?= gcc
BUILD   ?= build
PKGS    := openblas libmicrohttpd jansson libuv sqlite3 cmocka
OPT     ?= -O2 -march=x86-64-v2 -g
SAN     ?=
CFLAGS_BASE = -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -Iinclude -MMD -MP
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CFLAGS  = $(CFLAGS_BASE) $(OPT) $(SAN) $(PKG_CFLAGS)
LDLIBS  = $(PKG_LIBS) -lm -lpthread
LDFLAGS = $(SAN)

DEB_PKGS := build-essential pkg-config libopenblas-dev libmicrohttpd-dev \
            libjansson-dev libuv1-dev libsqlite3-dev libcmocka-dev \
            python3 python3-pytest curl nginx-light

LIB_SRC  := $(wildcard src/*.c)
SRV_SRC  := $(wildcard server/*.c)
TEST_SRC := $(wildcard tests/unit/test_*.c)
BENCH_SRC := $(wildcard tests/bench/*.c)

LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
SRV_OBJ  := $(SRV_SRC:%.c=$(BUILD)/%.o)
TEST_BIN := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
BENCH_BIN := $(BUILD)/bench/prefixd-bench

MODEL     ?= models/stories260K/stories260K.bin
TOKENIZER ?= models/stories260K/tok512.bin
PYTHON    ?= /usr/bin/python3

.PHONY: all deps run test unit e2e asan bench clean

all: $(BUILD)/prefixd $(BUILD)/libprefixd.a $(TEST_BIN)

$(BUILD)/libprefixd.a: $(LIB_OBJ)
	@mkdir -p $(@D)
	$(AR) rcs $@ $^

$(BUILD)/prefixd: $(SRV_OBJ) $(BUILD)/libprefixd.a
	$(CC) $(LDFLAGS) -o $@ $(SRV_OBJ) $(BUILD)/libprefixd.a $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(BUILD)/libprefixd.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $< $(BUILD)/libprefixd.a $(LDLIBS)

$(BENCH_BIN): $(BENCH_SRC:%.c=$(BUILD)/%.o) $(BUILD)/libprefixd.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(BUILD)/libprefixd.a $(LDLIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c -o $@ $<

# Installs only what is missing; works as root on a fresh Debian 12 (sudo otherwise).
deps:
	@missing=$$(for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@if command -v npm >/dev/null 2>&1 && [ ! -d tests/e2e/node_modules/openai ]; then \
	  cd tests/e2e && npm ci --no-audit --no-fund --silent; fi

run: deps
	$(MAKE) $(BUILD)/prefixd
	@mkdir -p $(BUILD)/run/registry
	@for t in "story|Once upon a time" "lily|Lily and Ben were friends." "sun|The sun was hot."; do \
	  name=$${t%%|*}; text=$${t#*|}; \
	  [ -f $(BUILD)/run/registry/$$name.safetensors ] || \
	  $(BUILD)/prefixd prefix from-prompt --model $(MODEL) --tokenizer $(TOKENIZER) \
	    --task $$name --text "$$text" --out $(BUILD)/run/registry || exit 1; \
	done
	$(BUILD)/prefixd serve --config config/prefixd.json --model $(MODEL) --tokenizer $(TOKENIZER) \
	  --registry $(BUILD)/run/registry --data $(BUILD)/run/data

test: deps
	$(MAKE) all
	$(MAKE) unit
	$(MAKE) e2e

unit: $(TEST_BIN)
	@sh tests/run_unit.sh $(TEST_BIN)

e2e: $(BUILD)/prefixd
	PREFIXD_BIN=$(BUILD)/prefixd $(PYTHON) -m pytest -q tests/e2e

asan: deps
	$(MAKE) BUILD=build-asan OPT="-O1 -g -fno-omit-frame-pointer" \
	  SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" all
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  sh tests/run_unit.sh $(patsubst $(BUILD)/%,build-asan/%,$(TEST_BIN))
	ASAN_OPTIONS=detect_leaks=1 PREFIXD_BIN=build-asan/prefixd $(PYTHON) -m pytest -q tests/e2e

bench: deps
	$(MAKE) $(BENCH_BIN) $(BUILD)/prefixd
	$(BENCH_BIN)

clean:
	rm -rf build build-asan

-include $(shell find $(BUILD) build-asan -name '*.d' 2>/dev/null)
