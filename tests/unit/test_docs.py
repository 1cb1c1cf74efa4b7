from pathlib import Path

from hpctrain import config

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_configuration_doc_lists_every_key_as_the_code_describes_it():
    doc = (DOCS / "configuration.md").read_text()
    missing = [line for line in config.describe().splitlines() if line not in doc]
    assert not missing, "docs/configuration.md is out of date; regenerate with `make docs`:\n" + \
        "\n".join(missing)
