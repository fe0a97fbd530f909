"""The README, docs/ and benchmarks/README.md stay true to the tree: links resolve, and the README's commands name real CLIs and configs.

Fast (no import of sbvae, no training): it reads the Markdown files and pyproject.toml only.
docs/results/ holds committed measurements (reports written by sbvae-report) and is not checked here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "results"
# Programs a README command may start with besides the project's own console scripts.
TOOLS = {"python", "python3", "pip", "pytest", "ruff", "bash"}
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}

FENCE = re.compile(r"^([ \t]*)(```|~~~)([\w+-]*)[^\n]*\n(.*?)^\1\2[ \t]*$", re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CONFIG = re.compile(r"(?<![\w./-])configs/[\w./-]+\.ya?ml\b")


def markdown_files() -> list[Path]:
    docs = [p for p in sorted((ROOT / "docs").rglob("*.md")) if RESULTS not in p.parents]
    return [README, *docs, ROOT / "benchmarks" / "README.md"]


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return [(m.group(3).lower(), m.group(4)) for m in FENCE.finditer(text)]


def prose(text: str) -> str:
    """The text without fenced blocks and inline code, where a bracket is not a link."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def relative_links(path: Path) -> list[str]:
    targets = LINK.findall(prose(path.read_text(encoding="utf-8")))
    return [t for t in targets if not re.match(r"^([a-z][a-z0-9+.-]*:|#)", t, re.IGNORECASE)]


def console_scripts() -> set[str]:
    """The names under [project.scripts] of pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = re.search(r"^\[project\.scripts\]\s*$(.*?)(?=^\[|\Z)", text, re.DOTALL | re.MULTILINE)
    assert section, "pyproject.toml has no [project.scripts] section"
    return set(re.findall(r"^\s*([\w.-]+)\s*=", section.group(1), re.MULTILINE))


def shell_commands(body: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and prompts dropped,
    each line split at &&, || and ; into its commands."""
    commands = []
    for line in body.replace("\\\n", " ").splitlines():
        line = line.strip()
        line = line.removeprefix("$ ")
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as error:
            raise AssertionError(f"cannot parse the README command {line!r}: {error}") from None
        command: list[str] = []
        for word in [*words, ";"]:
            if word in ("&&", "||", ";"):
                if command:
                    commands.append(shlex.join(command))
                command = []
            else:
                command.append(word)
    return commands


def command_words(command: str) -> list[str]:
    """The command's words after any leading FOO=1 environment settings."""
    words = shlex.split(command)
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        words.pop(0)
    return words


def program(command: str) -> str:
    words = command_words(command)
    return words[0] if words else ""


def readme_shell_blocks() -> list[str]:
    return [body for lang, body in code_blocks(README.read_text(encoding="utf-8")) if lang in SHELL_BLOCKS]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file_that_exists(path):
    missing = []
    for target in relative_links(path):
        file = target.split("#", 1)[0].split("?", 1)[0]
        if file and not (path.parent / file).exists():
            missing.append(target)
    assert not missing, f"{path.relative_to(ROOT)} links to missing files: {missing}"


def test_the_link_check_sees_links_and_skips_code_and_urls(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        'See [a](a.md), ![pic](img/p.png "title"), [web](https://x.org/y.md), [here](#top) and `[no](x.md)`.\n'
        "```bash\necho [no](y.md)\n```\n"
    )
    assert relative_links(page) == ["a.md", "img/p.png"]


def test_the_readme_has_shell_commands():
    assert any(shell_commands(body) for body in readme_shell_blocks())


def test_every_readme_command_names_a_real_cli():
    allowed = console_scripts() | TOOLS
    unknown = [c for body in readme_shell_blocks() for c in shell_commands(body) if program(c) not in allowed]
    assert not unknown, (
        f"README commands that start with none of {sorted(allowed)} (console scripts of pyproject.toml, "
        f"or the tools): {unknown}"
    )


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_script_a_command_runs_exists(path):
    """`python X.py` and `bash X.sh` in the shell blocks of the README, docs/ and benchmarks/README.md
    (outside the README, only blocks marked as shell: docs also fence tables and config excerpts)."""
    shells = SHELL_BLOCKS if path == README else SHELL_BLOCKS - {""}
    blocks = [body for lang, body in code_blocks(path.read_text(encoding="utf-8")) if lang in shells]
    missing = []
    for body in blocks:
        for command in shell_commands(body):
            words = command_words(command)
            runs_a_script = program(command) in ("python", "python3", "bash") and len(words) > 1
            if runs_a_script and words[1].endswith((".py", ".sh")) and not (ROOT / words[1]).is_file():
                missing.append(words[1])
    assert not missing, f"{path.relative_to(ROOT)} commands run scripts that do not exist: {missing}"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_a_command_names_exists(path):
    """Config files named in shell blocks (the README's and docs'), which a reader copies and runs."""
    blocks = [body for lang, body in code_blocks(path.read_text(encoding="utf-8")) if lang in SHELL_BLOCKS]
    named = sorted({c for body in blocks for c in CONFIG.findall(body)})
    missing = [c for c in named if not (ROOT / c).is_file()]
    assert not missing, f"{path.relative_to(ROOT)} commands name config files that do not exist: {missing}"


def test_the_fence_parser_pairs_each_opening_with_its_closing():
    # A blank line before an opening fence is not its indentation (it once made a block run on to the next).
    text = "intro\n\n```bash\na\n```\ntext\n\n```\nb\n```\n  ~~~sh\n  c\n  ~~~\n"
    assert code_blocks(text) == [("bash", "a\n"), ("", "b\n"), ("sh", "  c\n")]


def test_the_command_parser_splits_chains_and_drops_comments():
    body = (
        "# a comment\n$ ruff check . && ruff format --check .\nsbvae-train fit \\\n  --config configs/x.yaml  # why\n"
    )
    assert shell_commands(body) == ["ruff check .", "ruff format --check .", "sbvae-train fit --config configs/x.yaml"]
    assert program("OMP_NUM_THREADS=1 pytest -q") == "pytest"
    # A script run under an environment setting is still the script the existence check looks for.
    assert command_words('A=1 B_2=x python3 benchmarks/gpu_check.py "$OUT/r"') == [
        "python3",
        "benchmarks/gpu_check.py",
        "$OUT/r",
    ]


def test_the_readme_install_and_test_commands_are_the_ones_ci_runs():
    commands = [c for body in readme_shell_blocks() for c in shell_commands(body)]
    assert "pip install -e '.[dev]'" in commands  # shlex.join's quoting of pip install -e ".[dev]"
    assert "pytest -q" in commands
    assert "ruff check ." in commands and "ruff format --check ." in commands


def test_the_readme_stays_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 160, f"README.md has {len(lines)} lines; move detail to docs/ (the aim is about 150)"
