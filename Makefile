PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean readme email-screenshot

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/privacy-ledger demo --out demo-out

# Headless Chromium screenshots of the demo's email at 760 and 400 px (a phone),
# demo-out/email-760.png and demo-out/email-400.png, for a person to look at (not CI).
email-screenshot: demo
	$(BIN)/python bench/screenshot_email.py --config demo-out/config.toml --audit --out demo-out/email.png

lint: $(STAMP)
	$(BIN)/ruff check daemon connectors sandbox vocabulary tests bench
	$(BIN)/lint-imports

# The real-WordPress contract tests need Debian's wordpress, php-cli and php-mysql: installed
# here when missing and run as root; otherwise those tests skip and say why.
test: $(STAMP) lint
	sh tests/wordpress/install-packages.sh
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) demo-out

# Refresh the generated parts of the docs: the README's command reference and the example config.
readme: $(STAMP)
	$(BIN)/python -c "import re, pathlib; from daemon.cli import command_reference; p = pathlib.Path('README.md'); t = p.read_text(); p.write_text(re.sub(r'(?s)<!-- commands -->\n.*?<!-- /commands -->', lambda m: '<!-- commands -->\n' + command_reference() + '<!-- /commands -->', t))"
	$(BIN)/privacy-ledger config-example > config/example.toml
