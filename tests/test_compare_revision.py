"""benchmarks/compare_revision.sh: each side runs its own revision's benchmark scripts, the
two sides alternate round by round, and the temporary checkout of the old revision is gone
afterwards (the README's same-hour comparison table comes from this script)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "compare_revision.sh"

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or shutil.which("bash") is None, reason="needs git and bash"
)

FAKE = """import os, sys
print("{version}", os.path.basename(os.getcwd()) == "{repo}", " ".join(sys.argv[1:]))
# {mention}
sys.exit({status})
"""


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def _write_scripts(repo: Path, version: str, mention: str) -> None:
    bench = repo / "benchmarks"
    for name, status in (("click_latency", 0), ("labelstudio_latency", 0), ("napari_latency", 1)):
        text = FAKE.format(version=version, repo=repo.name, mention=mention, status=status)
        (bench / f"{name}.py").write_text(text)


def test_each_side_runs_its_own_scripts_alternately(tmp_path):
    repo = tmp_path / "project"
    (repo / "benchmarks").mkdir(parents=True)
    shutil.copy(SCRIPT, repo / "benchmarks" / SCRIPT.name)
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.org")
    _git(repo, "config", "user.name", "t")
    _write_scripts(repo, "old-code", "no size option here")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "old")
    old = _git(repo, "rev-parse", "--short", "HEAD")
    _write_scripts(repo, "new-code", "--sizes HxW")  # uncommitted: the working tree is compared
    em = tmp_path / "em"
    em.mkdir()
    out = tmp_path / "out"

    env = dict(os.environ, PASAM_PYTHON=sys.executable, PASAM_EM_DIR=str(em))
    run = subprocess.run(
        ["bash", str(repo / "benchmarks" / SCRIPT.name), old, str(out), "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr

    for rnd in (1, 2):
        for name in ("click_latency", "labelstudio_latency", "napari_latency"):
            new_out = (out / f"current-{name}-{rnd}.txt").read_text().split()
            old_out = (out / f"rev-{old}-{name}-{rnd}.txt").read_text().split()
            assert new_out[:2] == ["new-code", "True"]  # the checkout's own scripts, run there
            assert old_out[:2] == ["old-code", "False"]  # the old revision's, in its checkout
    # the size option goes only to a click_latency that has it
    assert "--sizes 1024x1024" in (out / "current-click_latency-1.txt").read_text()
    assert "--sizes" not in (out / f"rev-{old}-click_latency-1.txt").read_text()
    assert f"--em-dir {em}" in (out / f"rev-{old}-napari_latency-1.txt").read_text()
    # a missed target (exit 1) is reported and the comparison goes on
    assert "napari_latency.py exited with status 1" in run.stderr

    order = [ln.split()[1] for ln in run.stderr.splitlines() if ln.startswith("== ")]
    assert order[:2] == ["current", f"rev-{old}"] and order[6:8] == [f"rev-{old}", "current"]
    assert len(order) == 12
    # the old revision's temporary checkout is removed
    assert _git(repo, "worktree", "list").count("\n") == 0
