# Shortcuts for dev.py, which bootstraps .venv by itself.
.PHONY: serve test bench
serve:
	python3 dev.py serve
test:
	python3 dev.py test
bench:
	python3 dev.py bench
