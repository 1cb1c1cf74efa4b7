#!/usr/bin/env python3
"""Regenerate the key list in docs/configuration.md from the config dataclasses (`make docs`)."""

from pathlib import Path

from hpctrain import config

doc = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
text = doc.read_text()
head = text[: text.index("```text\n") + len("```text\n")]
doc.write_text(head + config.describe() + "\n```\n")
