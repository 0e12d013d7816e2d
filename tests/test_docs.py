"""Every command and Python snippet in README.md and docs/*.md runs as written.

Each fenced block tagged `bash`, `sh`, `shell` or `python` is run, in the order of its file, in a scratch
copy of the repository made for that file (so a block may use what an earlier block of the same file
wrote, e.g. results/ of the quickstart run). Shell blocks run in `bash -e -o pipefail`; Python blocks as
a script. Blocks of other languages (json, yaml, untagged listings) are not commands and are not run.

Markers: HTML comments on the lines right above a block's opening fence (invisible when rendered, plain in
the source):

    <!-- not-run: REASON -->        not run here; REASON says what it needs (a GPU, a SLURM cluster, the
                                    Hugging Face hub, hours of CPU) or which test runs it instead
    <!-- ci-replace: OLD => NEW --> run with OLD replaced by NEW, to run it demo-sized (repeatable; OLD
                                    must occur in the block, so a stale replacement fails)

A marker of another name, a not-run without a reason or a ci-replace without `=>` fails
`test_markers_are_well_formed`. The `utrc` command is run as pyproject.toml's [project.scripts] declares
it; the hub is offline (HF_HUB_OFFLINE=1), so a block that needs it fails here rather than waiting.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_LANGUAGES = {"bash": "shell", "sh": "shell", "shell": "shell", "python": "python"}
MARKERS = ("not-run", "ci-replace")
BLOCK_TIMEOUT = 900  # seconds


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    kind: str  # "shell" | "python"
    code: str
    markers: list[tuple[str, str]] = field(default_factory=list)  # (name, text)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def not_run(self) -> str | None:
        return next((text for name, text in self.markers if name == "not-run"), None)

    def code_to_run(self) -> str:
        code = self.code
        for name, text in self.markers:
            if name == "ci-replace":
                old, new = (part.strip() for part in text.split("=>", 1))
                assert old in code, f"{self.where}: ci-replace {old!r} does not occur in the block"
                code = code.replace(old, new)
        return code


def blocks_of(path: Path) -> list[Block]:
    """The runnable fenced blocks of a Markdown file with the markers right above each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(`{3,})\s*([\w+-]*)", lines[i])
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith(fence.group(1))), None)
        assert end is not None, f"{path.relative_to(ROOT)}:{i + 1}: unclosed code fence"
        kind = RUN_LANGUAGES.get(fence.group(2).lower())
        if kind:
            markers, k = [], i - 1
            while k >= 0 and lines[k].strip().startswith("<!--"):
                comment = re.fullmatch(r"<!--\s*([\w-]+)\s*:\s*(.*?)\s*-->", lines[k].strip())
                markers.insert(0, (comment.group(1), comment.group(2)) if comment else ("?", lines[k].strip()))
                k -= 1
            blocks.append(Block(path, i + 1, kind, "\n".join(lines[i + 1 : end]) + "\n", markers))
        i = end + 1
    return blocks


def test_markers_are_well_formed():
    problems = []
    for path in DOCS:
        for block in blocks_of(path):
            for name, text in block.markers:
                if name not in MARKERS:
                    problems.append(f"{block.where}: unknown marker {name!r} ({text}); known: {MARKERS}")
                elif name == "not-run" and not text:
                    problems.append(f"{block.where}: not-run needs a reason")
                elif name == "ci-replace" and "=>" not in text:
                    problems.append(f"{block.where}: ci-replace needs OLD => NEW")
    assert not problems, "\n".join(problems)


def scratch_copy(destination: Path) -> Path:
    """The repository's files (tracked, and untracked ones git does not ignore) copied to `destination`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def console_scripts(bin_dir: Path) -> None:
    """The commands of pyproject.toml's [project.scripts], as pip's launchers run them."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("scripts", {})
    for name, target in scripts.items():
        module, function = target.split(":")
        launcher = bin_dir / name
        launcher.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\n"
                            f"sys.exit({function}())\n")
        launcher.chmod(0o755)


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_documented_commands_run(path, tmp_path):
    blocks = [b for b in blocks_of(path) if b.not_run is None]
    if not blocks:
        pytest.skip(f"{path.relative_to(ROOT)} has no block to run")
    work = scratch_copy(tmp_path / "repo")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    console_scripts(bin_dir)
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(work), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for n, block in enumerate(blocks):
        if block.kind == "python":
            script = tmp_path / f"block{n}.py"
            script.write_text(block.code_to_run())
            command = [sys.executable, str(script)]
        else:
            command = ["bash", "-e", "-o", "pipefail", "-c", block.code_to_run()]
        proc = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT,
                              check=False)
        assert proc.returncode == 0, (
            f"{block.where} failed (exit status {proc.returncode}):\n{block.code_to_run()}\n"
            f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"
        )
