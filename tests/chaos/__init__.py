"""Chaos: capsule churn while the agent, an API replica, the engine and the database are
killed with SIGKILL; then recovery and the counts that must be zero. `python -m tests.chaos`
(long form) or `--short` (the CI form, also tests/chaos/test_chaos_short.py)."""
