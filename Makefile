# The two commands of the README. Everything they need is installed by scripts/setup and cached in ~/.cache/glowd.
.PHONY: demo test setup bench
demo:
	scripts/demo
test:
	scripts/test
setup:
	scripts/setup
bench:
	. scripts/env.sh && scripts/setup && "$$GLOWD_BIN" bench --preset glow-64 --batch 8 --threads 2
