.PHONY: demo test lint bench

demo:  ## set up .venv and run the demo end to end
	bash scripts/demo.sh

test:  ## set up the four test environments and run the whole suite
	bash scripts/test.sh

lint:
	.venv/bin/ruff check ual_plugin tests benchmarks

bench:  ## CPU loss benchmark (see benchmarks/RESULTS.md)
	.venv/bin/python benchmarks/loss_bench.py
