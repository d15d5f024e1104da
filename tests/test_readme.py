"""CI must run exactly the README's test command; the README must open with its two commands."""

from tests.conftest import REPO


def _readme_commands():
    text = (REPO / "README.md").read_text()
    head = text.split("\n## ", 1)[0]
    blocks = head.split("```")[1::2]
    return [line.strip() for b in blocks for line in b.splitlines()[1:] if line.strip() and not line.startswith("#")]


def test_readme_opens_with_two_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    assert "experiments.run" in commands[0] and "pytest" in commands[1]


def test_ci_runs_exactly_the_readme_test_command():
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert _readme_commands()[1] in ci
