-- anthropic_env 0.1.0 to 0.2.0.  A fresh CREATE EXTENSION at 0.2.0 runs
-- anthropic_env--0.1.0.sql and then this file, so every SQL change of
-- 0.2.0 lives here and nowhere else.
\echo Use "ALTER EXTENSION anthropic_env UPDATE TO '0.2.0'" to load this file. \quit
