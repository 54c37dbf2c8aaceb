# The two quick-start commands (see README.md).
.PHONY: demo test setup crds lint

demo:  ## set up and fine-tune SmolLM2-135M-Instruct locally, end to end
	scripts/demo.sh

test:  ## set up and run the whole test suite (what CI runs)
	scripts/test.sh

setup:
	scripts/setup.sh

crds:
	.venv/bin/slmops crds

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy
