"""The container image is pinned: base by digest, every Python package by the locks, nothing resolved at build time.

No Docker here (nor in CI): these read containers/Dockerfile and the locks it installs from, the way a reviewer
would, and lint the Dockerfile with hadolint (from PyPI, the test extra).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "containers" / "Dockerfile"
LOCK = REPO / "containers" / "requirements.lock"
BUILD_LOCK = REPO / "containers" / "build.lock"


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(
        line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _pins(lock: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) for every requirement in a hash-checked lock."""
    pins: dict[str, tuple[str, int]] = {}
    text = re.sub(r"\\\n", " ", lock.read_text())
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})+)", line)
        assert match, f"{lock.name}: not an exact pin with hashes: {line[:80]}"
        pins[canonicalize_name(match[1])] = (match[2], match[3].count("--hash="))
    return pins


def test_every_base_image_is_pinned_by_digest():
    froms = [args for word, args in _instructions(DOCKERFILE) if word == "FROM"]
    assert froms
    for image in froms:
        assert re.search(r"@sha256:[0-9a-f]{64}(\s|$)", image), f"FROM {image} is not pinned by digest"


def test_every_pip_install_in_the_image_takes_only_hash_checked_locks_or_the_package_itself():
    runs = " && ".join(args for word, args in _instructions(DOCKERFILE) if word == "RUN")
    installs = [cmd.strip() for cmd in re.split(r"&&|;", runs) if re.search(r"\bpip3? install\b", cmd)]
    assert installs
    locks_installed = []
    for cmd in installs:
        if "--require-hashes" in cmd:
            assert "--no-deps" in cmd, cmd
            locks_installed += re.findall(r"-r\s+(\S+)", cmd)
        else:
            # The package from the build context: its dependencies are already there, nothing may be fetched.
            assert re.search(r"--no-index\b", cmd) and "--no-deps" in cmd and cmd.endswith(" ."), cmd
    assert sorted(Path(p).name for p in locks_installed) == ["build.lock", "requirements.lock"]
    copied = " ".join(args for word, args in _instructions(DOCKERFILE) if word == "COPY")
    assert "containers/build.lock" in copied and "containers/requirements.lock" in copied


def test_the_locks_pin_every_package_exactly_with_hashes():
    pins = _pins(LOCK)
    assert len(pins) > 50
    assert all(count >= 1 for _, count in pins.values())
    assert _pins(BUILD_LOCK)


def test_the_lock_satisfies_every_dependency_of_the_package_and_the_image_inputs():
    pins = _pins(LOCK)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(line) for line in (REPO / "containers" / "requirements.in").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for req in wanted:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in requirements.lock: run bash containers/lock.sh"
        assert req.specifier.contains(pins[name][0], prereleases=True), \
            f"requirements.lock pins {name}=={pins[name][0]}, outside {req}: run bash containers/lock.sh"


def test_the_build_backend_is_the_same_setuptools_as_the_locked_one():
    assert _pins(BUILD_LOCK)["setuptools"][0] == _pins(LOCK)["setuptools"][0]


def test_the_locks_say_how_they_were_made():
    for lock in (LOCK, BUILD_LOCK):
        assert "bash containers/lock.sh" in lock.read_text().splitlines()[1]


def test_the_image_does_not_ship_results_environments_or_git_history():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "results", ".snakemake"} <= ignored


def test_the_workflow_container_comes_from_config():
    snakefile = (REPO / "workflow" / "Snakefile").read_text()
    assert re.search(r'^container: config\["container"\]$', snakefile, re.M)


def test_the_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install -e '.[test]' brings it)")
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_run_inside_the_image_records_the_image_and_the_commit_it_was_built_from(tmp_path, monkeypatch):
    from kernelcraft.manifest import container_state, git_state

    monkeypatch.setenv("KERNELCRAFT_IMAGE", "kernelcraft:0.1.0")
    monkeypatch.setenv("KERNELCRAFT_IMAGE_DIGEST", "sha256:" + "ab" * 32)
    monkeypatch.setenv("APPTAINER_CONTAINER", "/scratch/kernelcraft.sif")
    monkeypatch.setenv("KERNELCRAFT_GIT_COMMIT", "c" * 40)
    monkeypatch.setenv("KERNELCRAFT_GIT_DIRTY", "0")
    assert container_state() == {"runtime": "apptainer", "image": "kernelcraft:0.1.0",
                                 "image_file": "/scratch/kernelcraft.sif", "digest": "sha256:" + "ab" * 32}
    # No .git in the image: the commit baked in at build time names the source.
    assert git_state(tmp_path) == {"commit": "c" * 40, "dirty": False, "source": "image"}


def test_a_run_on_the_host_records_no_container(monkeypatch):
    from kernelcraft.manifest import container_state, git_state

    for var in ("KERNELCRAFT_IMAGE", "APPTAINER_CONTAINER", "SINGULARITY_CONTAINER", "KERNELCRAFT_GIT_COMMIT"):
        monkeypatch.delenv(var, raising=False)
    if Path("/.dockerenv").exists():
        pytest.skip("this test machine is itself a Docker container")
    assert container_state() is None
    assert git_state(REPO)["commit"] is None or len(git_state(REPO)["commit"]) == 40
