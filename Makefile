# anthropic_env: PGXS build.
#
# The test suites are driven by scripts/test (see README.md).  "make
# installcheck" runs pg_regress on a temporary instance; it needs
# FAKE_API_CONF to name a temp config that points anthropic.base_url at a
# running fake API, which scripts/test writes.

EXTENSION = anthropic_env
MODULE_big = anthropic_env
EXTVERSION = 0.2.0

OBJS = \
	src/anthropic_env.o \
	src/guc.o \
	src/retry.o \
	src/http.o \
	src/endpoints.o \
	src/api.o \
	src/apijson.o \
	src/convert.o \
	src/jsonbuild.o \
	src/sqlfuncs.o \
	src/env.o \
	src/work.o \
	src/worker.o \
	src/stats.o \
	src/redact.o \
	src/envkeys.o \
	src/leases.o \
	src/claim.o \
	src/keeper.o \
	src/keycheck.o

# 0.1.0 stays exactly as released; every later change is an upgrade step,
# and CREATE EXTENSION at 0.2.0 runs 0.1.0 followed by the steps.
DATA = sql/anthropic_env--0.1.0.sql sql/anthropic_env--0.1.0--0.2.0.sql
PG_CPPFLAGS = -I$(srcdir)/src
# PostgreSQL's own headers trip these -Wextra checks (unused parameters in
# static inline functions, for one), so they are turned off; the rest of
# -Wextra stays an error.
PG_CFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers
SHLIB_LINK = -lcurl -ljansson

REGRESS = setup env_basic env_list env_lifecycle env_update many errors work stats security
REGRESS_OPTS = --temp-instance=tmp_check --temp-config=$(FAKE_API_CONF)

EXTRA_CLEAN = tmp_check results regression.diffs regression.out

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS tracks no header dependencies: an object built before a header
# changed would keep the old layout of its structs.  Every object depends on
# every header of src/.
$(OBJS): $(wildcard $(dir $(firstword $(MAKEFILE_LIST)))src/*.h)

# pg_buildext builds out of tree (VPATH), where the object directory does
# not exist yet.
ifdef VPATH
$(shell mkdir -p src)
endif

# scripts/test checks that pg_regress ran every test listed here.
.PHONY: print-regress
print-regress:
	@echo $(REGRESS)

# --- Reliability and security checks (issue 8); not part of scripts/test ---
#
# make fuzz       builds test/fuzz/fuzz_apijson (libFuzzer, ASan, UBSan:
#                 src/apijson.c and jansson only, no PostgreSQL) and runs it
#                 for FUZZ_SECONDS over test/fuzz/corpus; new inputs go to
#                 test/fuzz/out/corpus, crashes to test/fuzz/out/.
# make valgrind   runs the pg_regress suite, then test/valgrind/faults.sql (the
#                 transport's failure paths), with the server under valgrind
#                 memcheck, and fails on invalid reads/writes or definite leaks
#                 in anthropic_env frames (test/valgrind/run, test/valgrind/check).
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 60
FUZZ_FLAGS = -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all

test/fuzz/fuzz_apijson: test/fuzz/fuzz_apijson.c src/apijson.c src/apijson.h
	ANTHROPIC_ENV_WITH_CHECKS=1 $(srcdir)/scripts/install-deps
	$(FUZZ_CC) $(FUZZ_FLAGS) -I$(srcdir)/src -o $@ $(srcdir)/test/fuzz/fuzz_apijson.c $(srcdir)/src/apijson.c -ljansson

.PHONY: fuzz valgrind
fuzz: test/fuzz/fuzz_apijson
	@mkdir -p test/fuzz/out/corpus
	test/fuzz/fuzz_apijson -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
		-print_final_stats=1 -dict=$(srcdir)/test/fuzz/apijson.dict -artifact_prefix=test/fuzz/out/ \
		test/fuzz/out/corpus $(srcdir)/test/fuzz/corpus

valgrind:
	ANTHROPIC_ENV_WITH_CHECKS=1 $(srcdir)/scripts/install-deps
	$(srcdir)/test/valgrind/run

EXTRA_CLEAN += test/fuzz/fuzz_apijson test/fuzz/out test/valgrind/out
