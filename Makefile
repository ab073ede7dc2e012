# anthropic_env: PGXS build.
#
# The test suites are driven by scripts/test (see README.md).  "make
# installcheck" runs pg_regress on a temporary instance; it needs
# FAKE_API_CONF to name a temp config that points anthropic.base_url at a
# running fake API, which scripts/test writes.

EXTENSION = anthropic_env
MODULE_big = anthropic_env
EXTVERSION = 0.1.0

OBJS = \
	src/anthropic_env.o \
	src/guc.o \
	src/http.o \
	src/api.o \
	src/apijson.o \
	src/convert.o \
	src/sqlfuncs.o \
	src/env.o \
	src/work.o \
	src/worker.o \
	src/stats.o \
	src/redact.o

DATA = sql/anthropic_env--$(EXTVERSION).sql
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
