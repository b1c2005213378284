"""The documentation builds strictly, and the commands it shows that run on a CPU in seconds do run.

The site (mkdocs.yml, docs/) is built with `mkdocs build --strict`: a warning, a link or anchor that does not
resolve, or a page missing from the nav fails it. Commands are read from the ```bash blocks of docs/*.md and
README.md, so a changed CLI fails here rather than in a reader's terminal: the schedule report and the audit
(their shown output, the plain ``` block right after the command, must be printed), every
`launch/train.py ... --cfg job` (composed; the first also run), `launch/plan_memory.py model=tiny`, and every
`make TARGET` (a Makefile target).
"""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from training_helpers import compose

from zsnr.models.sd21_folder import SD21_BASE_SCHEDULER

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)


def _blocks() -> list[tuple[Path, str, str]]:
    """(page, language, text) of every fenced block, in page order."""
    return [(page, m.group(1), m.group(2)) for page in PAGES for m in FENCE.finditer(page.read_text())]


def _commands() -> list[str]:
    lines = []
    for _, lang, text in _blocks():
        if lang == "bash":
            lines += [re.split(r"\s{2,}#", line)[0].strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _shown_output(command: str) -> tuple[Path, list[str]]:
    """The plain block that follows the bash block holding only `command`."""
    blocks = _blocks()
    for (page, lang, text), (_, next_lang, output) in zip(blocks, blocks[1:], strict=False):
        if lang == "bash" and text.strip() == command and next_lang == "":
            return page, [line.strip() for line in output.splitlines() if line.strip()]
    raise AssertionError(f"no page shows `{command}` followed by its output")


def _run(args: list[str], tmp_path: Path) -> str:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_site_builds_strictly(tmp_path):
    env = os.environ | {"NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    for page in ("index", "getting-started", "paper", "uis", "benchmarks", "api/diffusion"):
        assert (tmp_path / "site" / f"{page}.html").exists(), page
    api = (tmp_path / "site" / "api" / "diffusion.html").read_text()
    assert 'class="arithmatex"' in api and "rescale_zero_terminal_snr" in api  # the equations render as maths


def test_the_schedule_report_prints_what_the_docs_show(tmp_path):
    command = "python -m zsnr.diffusion.report --plot schedules.png"
    page, shown = _shown_output(command)
    printed = [line.strip() for line in _run(shlex.split(command)[1:], tmp_path).splitlines()]
    missing = [line for line in shown if line not in printed]
    assert not missing, f"{page.name} shows lines the report does not print: {missing}"
    assert (tmp_path / "schedules.png").stat().st_size > 0


def test_the_audit_prints_what_the_docs_show_for_sd21_base(tmp_path):
    command = "python -m zsnr.audit path/to/stable-diffusion-2-1-base"
    page, shown = _shown_output(command)
    folder = tmp_path / "path" / "to" / "stable-diffusion-2-1-base" / "scheduler"
    folder.mkdir(parents=True)
    (folder / "scheduler_config.json").write_text(json.dumps(SD21_BASE_SCHEDULER))
    printed = [" ".join(line.split()) for line in _run(shlex.split(command)[1:], tmp_path).splitlines()]
    missing = [line for line in shown if " ".join(line.split()) not in printed]
    assert not missing, f"{page.name} shows lines the audit does not print: {missing}"


def test_every_cfg_job_command_composes():
    commands = [c for c in _commands() if c.startswith("python launch/train.py") and c.endswith("--cfg job")]
    assert any("experiment=paper" in c for c in commands), "the docs should show a --cfg job check"
    for command in commands:
        overrides = shlex.split(command)[2:-2]
        assert "-m" not in overrides, command
        cfg = compose("train", overrides)
        assert cfg.name, command


def test_the_first_cfg_job_command_runs(tmp_path):
    command = next(c for c in _commands() if c.endswith("--cfg job"))
    printed = _run(
        [str(ROOT / a) if a.startswith("launch/") else a for a in shlex.split(command)[1:]], tmp_path
    )
    assert re.search(r"^name: \w+", printed, re.M), printed[:500]


def test_plan_memory_on_the_tiny_model_runs(tmp_path):
    command = "python launch/plan_memory.py model=tiny"
    assert command in _commands()
    printed = _run([str(ROOT / "launch" / "plan_memory.py"), "model=tiny"], tmp_path)
    assert "tiny model" in printed and "**peak" in printed


def test_every_make_command_is_a_makefile_target():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    used = {c.split()[1] for c in _commands() if c.startswith("make ")}
    assert {"demo", "test", "paper", "docs"} <= used
    assert used <= targets, used - targets


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_name_no_file_outside_the_repository(page):
    text = page.read_text()
    for pattern in (r"/work/", r"/home/", r"shared/tools", r"PAPER\.md", r"STYLE\.md"):
        assert not re.search(pattern, text), (page.name, pattern)


def test_the_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text()
    first_screen = "\n".join(text.splitlines()[:20])
    assert "make demo" in first_screen and "make test" in first_screen
    assert len(text.splitlines()) <= 250
