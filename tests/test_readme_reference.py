"""The README's step reference and settings table match the code."""

from __future__ import annotations

from scripts.generate_reference import README, render


def test_readme_reference_is_current() -> None:
    current = README.read_text()
    assert render(current) == current, "README.md is stale: run `make docs`"
    assert "make run" in current and "make test" in current
