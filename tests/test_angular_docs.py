"""docs/ANGULAR.md quotes the Angular example's files as they are: a quote that drifts fails here."""

from __future__ import annotations

import re

from tests.services import ROOT

DOC = ROOT / "docs" / "ANGULAR.md"
EXAMPLE = ROOT / "examples" / "angular"
# A quote is a link to the file, a blank line, and the file's whole text in a fenced block.
QUOTE = re.compile(
    r"^\[`(?P<name>[^`]+)`\]\(\.\./examples/angular/(?P<path>[^)]+)\):\n\n```\w*\n(?P<text>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)
MUST_QUOTE = {"src/app/credentials.interceptor.ts", "src/app/app.config.ts", "proxy.conf.json"}


def quotes() -> dict[str, str]:
    found: dict[str, str] = {}
    for match in QUOTE.finditer(DOC.read_text()):
        assert match["name"] == match["path"], match.group(0)[:200]
        found[match["path"]] = match["text"]
    return found


def test_the_interceptor_providers_and_proxy_config_are_quoted():
    assert quotes().keys() >= MUST_QUOTE


def test_every_quote_is_its_file_as_it_is():
    for path, text in quotes().items():
        assert text == (EXAMPLE / path).read_text(), f"docs/ANGULAR.md quotes {path} as it no longer is"


def test_the_readme_sends_angular_readers_to_the_doc():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The demo client, and Angular", 1)[1].split("\n#", 1)[0]
    assert "(docs/ANGULAR.md)" in section
    assert "```" not in section  # the code lives in the doc, where it is checked
