"""The README as a newcomer uses it: every command in it parses with the real CLI and runs (shortened where it
would take minutes), its code examples work, its links resolve, it stays short, and no file of the repository
cites a file outside it."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from dynamics.cli import build_parser
from dynamics.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAX_LINES = 250

# How the test runs a README command that takes minutes as written; the command itself is parsed as written.
SHORT_TRAIN = ["train.epochs=1", "train.steps_per_epoch=10", "eval.num_samples=256", "eval.every_epochs=0"]


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def readme_commands() -> list[tuple[str, bool]]:
    """Every command line of the README's bash blocks, and whether the pieces example (tests/test_pieces.py runs
    those) holds it."""
    text = README.read_text()
    pieces_at = text.index("<!-- pieces-example -->")
    commands = []
    for match in re.finditer(r"```bash\n(.*?)```", text, re.S):
        in_pieces = match.start() > pieces_at and not code_blocks(text[pieces_at:match.start()], "bash")
        for line in match.group(1).splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            if line and not line.startswith("#"):
                commands.append((line, in_pieces))
    return commands


def dynamics_argv(line: str) -> list[str]:
    return shlex.split(line)[1:]


def parse(argv: list[str]):
    """Parse as `dynamics` does: options and key=value overrides anywhere, nothing else left over."""
    args, extra = build_parser().parse_known_args(argv)
    assert all("=" in e and not e.startswith("-") for e in extra), f"unknown arguments {extra} in {argv}"
    assert not extra or hasattr(args, "overrides"), f"{argv[0]} takes no key=value overrides: {extra}"
    return args


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines; keep it to {MAX_LINES} (details go in docs/)"


def test_every_readme_command_is_known_and_parses():
    commands = readme_commands()
    assert len([c for c, _ in commands if c.startswith("dynamics ")]) >= 10
    makefile = (REPO / "Makefile").read_text()
    subcommands = set()
    for line, _ in commands:
        word = line.split()[0]
        if word == "make":
            for target in line.split()[1:]:
                if "=" not in target:
                    assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"no Makefile target {target!r}"
        elif word == "export":
            assert re.fullmatch(r"export [A-Z_]+=\S+", line), line
        elif word == "torchrun":  # the dynamics command it starts on each rank (tests/test_distributed.py runs one)
            argv = shlex.split(line)
            start = next(i for i, a in enumerate(argv) if a.endswith("bin/dynamics")) + 1
            subcommands.add(parse(argv[start:]).func.__name__)
        else:
            assert word == "dynamics", f"README command {line!r} is neither make nor dynamics: test it here"
            subcommands.add(parse(dynamics_argv(line)).func.__name__)
    assert {"cmd_train", "cmd_studies", "cmd_run", "cmd_status", "cmd_analyze", "cmd_tas", "cmd_sample",
            "cmd_reproduce"} <= subcommands


def test_a_wrong_flag_in_the_readme_would_fail():
    with pytest.raises(AssertionError, match="unknown arguments"):
        parse(["run", "main", "--scale", "smoke", "--dry-rnu"])
    with pytest.raises(AssertionError, match="takes no key=value overrides"):
        parse(["studies", "train.lr=1"])
    with pytest.raises(SystemExit):  # a missing required option
        parse(["run", "main", "--dry-run"])


def runnable(line: str) -> list[str]:
    """The argv the test runs for a README line: as written, but short (a few steps, a dry reproduction, the
    grid trained in this process instead of worker processes)."""
    argv = dynamics_argv(line)
    if argv[0] == "train" and "--dry-run" not in argv:
        argv += [*SHORT_TRAIN, "--quiet"]
    if argv[0] == "run" and "--dry-run" not in argv and "--executor" not in argv:
        argv += ["--executor", "debug"]
    if argv[0] == "reproduce" and "--dry-run" not in argv:
        argv += ["--dry-run"]
    if argv[0] in ("run", "tas", "reproduce") and "--dry-run" not in argv:
        argv += ["--quiet"]
    return argv


def test_every_readme_command_runs(tmp_path, monkeypatch, capsys):
    """The README's commands in order, in a fresh directory: each ends with exit status 0."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "slurm").symlink_to(REPO / "slurm")
    for line, in_pieces in readme_commands():
        if not line.startswith("dynamics ") or in_pieces:
            continue
        argv = runnable(line)
        code = cli_main(argv)
        assert code in (0, None), f"`dynamics {' '.join(argv)}` exited {code}: {capsys.readouterr().err[-1500:]}"
    assert (tmp_path / "samples.npy").exists() and (tmp_path / "runs" / "moons" / "config.json").exists()
    assert (tmp_path / "results" / "smoke" / "o3-task-affinity" / "tas.csv").exists()
    assert (tmp_path / "results" / "smoke" / "report.md").exists()


def test_the_study_example_registers_and_resolves(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    module = next(b for b in code_blocks(text, "python") if b.startswith("# my_studies.py"))
    (tmp_path / "my_studies.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    command = re.search(r"`(dynamics run \S+ --register my_studies --scale smoke)`", text).group(1)
    assert cli_main([*dynamics_argv(command), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "k=1.0/s0" in out and "k=2.0/s0" in out


def test_the_python_api_imports():
    """Every import line of the README's Python API block names something that exists."""
    text = README.read_text()
    api = next(b for b in code_blocks(text, "python") if "dynamics.api" in b)
    imports = [line.split("#")[0].rstrip() for line in api.splitlines() if line.startswith("from ")]
    assert len(imports) >= 5
    exec("\n".join(imports), {})  # an ImportError names the missing module or name


def heading_anchors(md: Path) -> set[str]:
    """GitHub's anchors of a markdown file's headings."""
    anchors = set()
    for line in md.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return anchors


def test_links_in_readme_and_docs_resolve():
    for md in [README, REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", md.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (md.parent / path).resolve() if path else md
            assert linked.exists(), f"{md.relative_to(REPO)} links to {target}, which does not exist"
            if anchor and linked.suffix == ".md":
                assert anchor in heading_anchors(linked), f"{md.relative_to(REPO)}: no heading for #{anchor}"


def repository_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    return [REPO / f for f in listed if (REPO / f).is_file() and Path(f).suffix not in (".png", ".pdf", ".npz")]


def test_no_file_cites_a_file_outside_the_repository():
    outside = re.compile("DESIGN" + r"(\.md| section)|\.\./shared|/work/" + "shared")
    docs_cited = re.compile(r"docs/([\w.-]+\.md)")
    for path in repository_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        name = path.relative_to(REPO)
        assert not outside.search(text), f"{name} cites a file outside the repository: {outside.search(text)[0]}"
        for cited in docs_cited.findall(text):
            assert (REPO / "docs" / cited).exists(), f"{name} cites docs/{cited}, which does not exist"
