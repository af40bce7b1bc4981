# The two commands a new user needs (see README.md).
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export GRADIO_ANALYTICS_ENABLED := False
export ANONYMIZED_TELEMETRY := False

.PHONY: chat test setup bench

chat:
	bash scripts/setup.sh
	.venv/bin/cdra chat

test:
	bash scripts/setup.sh --browser --bench
	.venv/bin/python -m pytest

bench:
	bash scripts/setup.sh --bench
	.venv/bin/cdra bench generate
