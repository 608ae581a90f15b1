# The two entry points of the README. Both create .venv and install dependencies on first use.
.PHONY: demo test lint

demo:
	@bash scripts/setup_env.sh
	.venv/bin/pri3d demo --out out/demo

test:
	@bash scripts/setup_env.sh
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q

lint:
	@bash scripts/setup_env.sh
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
