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


def test_readme_is_an_overview_not_a_lab_notebook():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 200, len(lines)


def test_every_relative_link_of_the_docs_resolves():
    import re

    for doc in [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"


def test_no_file_in_the_repo_points_to_documents_outside_it():
    import subprocess

    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    # The names of the input notes that live beside the repo, joined here so that this file does not
    # name them itself (it is the one place that has to spell them, and a check reads every file).
    outside = tuple("".join(parts) for parts in (("apt-", "method.md"), ("shared", "/docs"), ("design", ".md"),
                                                 ("environment", ".md"), ("SOURCES", ".md in the")))
    hits = [f"{name}: {needle}" for name in files if name.endswith((".py", ".md", ".yaml", ".ipynb", ".cff", "setup", "run"))
            and (REPO / name).is_file()
            for needle in outside if needle in (REPO / name).read_text(errors="replace")]
    assert not hits, hits


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's API example, verbatim, with the hub model swapped for a tiny one and the shared data."""
    import pytest
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pruning.models import load_model
    from tests.conftest import SHARED_DATA, compose_cfg

    if not SHARED_DATA.is_dir():
        pytest.skip("needs ../shared/data (CI has it)")
    text = (REPO / "README.md").read_text()
    (code,) = [b[len("python\n"):] for b in text.split("```")[1::2] if b.startswith("python\n")]
    tiny = load_model(compose_cfg(["model=tiny-llama"]).model)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(lambda cls, *a, **k: tiny.model))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(lambda cls, *a, **k: tiny.tokenizer))
    monkeypatch.setenv("PRUNING_DATA_ROOT", str(SHARED_DATA))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["report"].actual["actual"] == 0.5 and (tmp_path / "smollm2-2of4" / "config.json").is_file()


def test_the_readme_results_come_from_the_benchmarks_document():
    """Every number of the README's results table appears in docs/benchmarks.md, whose tables are rendered
    from the records by `analysis.tables` (the README only quotes them)."""
    import re

    text = (REPO / "README.md").read_text()
    section = text.split("\n## Results", 1)[1].split("\n## ", 1)[0]
    numbers = set(re.findall(r"\d+\.\d+", section))
    bench = (REPO / "docs" / "benchmarks.md").read_text()
    missing = sorted(n for n in numbers if n not in bench)
    assert numbers and not missing, missing


def test_section_pointers_in_code_name_sections_that_exist():
    """`docs/x.md, "Section"` pointers name a heading of that document; no numbered `§` pointers (the
    numbering of documents outside the repo)."""
    import re
    import subprocess

    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    bad = []
    for name in files:
        if (not name.endswith((".py", ".yaml", ".md")) or name in ("CHANGELOG.md", "tests/test_readme.py")
                or not (REPO / name).is_file()):
            continue
        text = (REPO / name).read_text(errors="replace")
        if re.search(r"docs/\w+\.md §", text):
            bad.append(f"{name}: numbered section pointer")
        for doc, section in re.findall(r"docs/(\w+)\.md, (?:requirement \w+ of )?\"([^\"]+)\"", text):
            target = REPO / "docs" / f"{doc}.md"
            headings = [h.strip("# ").strip() for h in target.read_text().splitlines()
                        if h.startswith("#")] if target.is_file() else []
            if not any(section in h for h in headings):
                bad.append(f"{name}: docs/{doc}.md has no section {section!r}")
    assert not bad, bad
