"""A run as one archive: checksummed, deterministic, refused with one line when truncated, corrupted or tampered
with; and two runs (or a run and its archive) compared: the same search when sources and verdicts agree."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from kernelcraft.archive.bundle import SUMS, ArchiveError, extract_archive, read_archive, write_archive
from kernelcraft.archive.compare import compare_runs, load_run

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"


def _run(work: Path, name: str, seed: int) -> Path:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update({"run": name, "rounds": 2, "ideas_per_round": 1, "implementations_per_idea": 2, "top_k": 1,
                   "backend": "cpu", "seed": seed})
    config["problems"].update({"builtin": ["relu_4096x32768"], "size": "small"})
    config["benchmark"].update({"iters": 5, "warmup": 1, "min_time_ms": 5})
    config["verify"]["trials"] = 2
    (work / f"{name}.yaml").write_text(yaml.safe_dump(config))
    snakemake = shutil.which("snakemake", path=str(Path(sys.executable).parent))
    proc = subprocess.run([snakemake, "-s", str(SNAKEFILE), "--configfile", f"{name}.yaml", "--cores", "2",
                           "--resources", "gpu=1"], cwd=work, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work / "results" / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("runs")
    return _run(work, "seed0", 0), _run(work, "seed1", 1)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kernelcraft.cli", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_an_archive_holds_the_run_with_a_checksum_for_every_file_and_is_the_same_bytes_twice(runs, tmp_path):
    run = runs[0]
    first = write_archive(run, tmp_path / "a.tar.gz")
    second = write_archive(run, tmp_path / "b.tar.gz")
    assert first.read_bytes() == second.read_bytes()
    name, files = read_archive(first)
    assert name == "seed0"
    assert {"manifest.json", "report.html", "candidates.csv"} <= set(files)
    assert any(p.endswith(".py") and "/candidates/" in p for p in files)  # every candidate's source
    assert any(p.endswith("/verify.json") for p in files) and any(p.endswith("/benchmark.json") for p in files)
    assert not any(part in ("build", "tmp", "__pycache__") for p in files for part in p.split("/"))
    with tarfile.open(first) as tar:
        sums = tar.extractfile("seed0/" + SUMS).read().decode().splitlines()
    assert len(sums) == len(files)
    assert files["problems/relu_4096x32768.py"] == (REPO / "src/kernelcraft/problems/suite/relu_4096x32768.py"
                                                    ).read_bytes()  # the reference, for a replay elsewhere
    root = extract_archive(first, tmp_path / "out")
    written = [rel for rel in files if not rel.startswith("problems/")]
    assert all((root / rel).read_bytes() == (run / rel).read_bytes() for rel in written)


@pytest.mark.slow
def test_a_run_and_its_archive_are_the_same_search_and_another_seed_is_not(runs, tmp_path):
    archive = write_archive(runs[0], tmp_path / "seed0.tar.gz")
    same = _cli("compare", str(runs[0]), str(archive))
    assert same.returncode == 0, same.stderr
    assert "same search: yes" in same.stdout and "configuration identical" in same.stdout
    other = _cli("compare", str(archive), str(runs[1]), "--json")
    assert other.returncode == 1, other.stderr
    result = json.loads(other.stdout)
    assert result["same_search"] is False and result["same_config"] is False
    assert result["config_differs"] == ["run", "seed"]
    assert "configuration differs in run, seed" in _cli("compare", str(archive), str(runs[1])).stdout
    assert result["sources_differ"] or result["only_in_a"] or result["only_in_b"]
    view = load_run(runs[0])
    assert compare_runs(view, view)["timings"]  # correct candidates are timed side by side


def _rewrite(src: Path, dst: Path, change, plant: bytes | None = None) -> None:
    """Copy an archive member by member, ``change(name, data)`` returning new data (None drops the member), and
    optionally plant one more file in the run's folder."""
    out = io.BytesIO()
    with tarfile.open(src) as tin, gzip.GzipFile(fileobj=out, mode="wb") as gz, \
            tarfile.open(fileobj=gz, mode="w") as tout:
        names = []
        for info in tin:
            names.append(info.name)
            data = change(info.name, tin.extractfile(info).read())
            if data is not None:
                info.size = len(data)
                tout.addfile(info, io.BytesIO(data))
        if plant is not None:
            info = tarfile.TarInfo(names[0].split("/")[0] + "/planted.py")
            info.size = len(plant)
            tout.addfile(info, io.BytesIO(plant))
    dst.write_bytes(out.getvalue())


@pytest.mark.slow
@pytest.mark.parametrize("damage,message", [
    ("truncated", "truncated or not a .tar.gz"),
    ("corrupted", "truncated or not a .tar.gz"),
    ("tampered", "does not match its checksum"),
    ("extra", "is not in SHA256SUMS"),
    ("dropped", "listed file(s) are missing"),
    ("no_sums", "has no SHA256SUMS"),
])
def test_a_damaged_or_altered_archive_is_refused_with_one_line(runs, tmp_path, damage, message):
    good = write_archive(runs[0], tmp_path / "good.tar.gz")
    bad = tmp_path / "bad.tar.gz"
    data = good.read_bytes()
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "corrupted":
        bad.write_bytes(data[:200] + bytes(b ^ 0xFF for b in data[200:260]) + data[260:])
    elif damage == "tampered":
        _rewrite(good, bad, lambda n, d: d.replace(b"ModelNew", b"ModelNeW") if n.endswith(".py") else d)
    elif damage == "extra":
        _rewrite(good, bad, lambda n, d: d, plant=b"import os\n")
    elif damage == "dropped":
        _rewrite(good, bad, lambda n, d: None if n.endswith("candidates.csv") else d)
    else:
        _rewrite(good, bad, lambda n, d: None if n.endswith(SUMS) else d)
    with pytest.raises(ArchiveError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_archive(bad)
    done = _cli("compare", str(bad), str(runs[0]))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_run_replayed_from_its_archive_in_a_clean_directory_is_the_same_search(runs, tmp_path):
    archive = write_archive(runs[0], tmp_path / "seed0.tar.gz")
    clean = tmp_path / "elsewhere"
    clean.mkdir()
    done = _cli("replay", str(archive), "--directory", str(clean), "--snakefile", str(SNAKEFILE))
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "same search: yes" in done.stdout
    assert "configuration differs in llm.replay, problems.builtin, problems.dirs, run" in done.stdout
    replayed = clean / "results" / "seed0-replay"
    assert (replayed / "report.html").is_file()
    manifest = json.loads((replayed / "manifest.json").read_text())
    assert manifest["config"]["problems"]["dirs"] == [str(clean / "replays" / next(
        p.name for p in (clean / "replays").iterdir() if p.is_dir()) / "seed0" / "problems")]
    again = _cli("replay", str(archive), "--directory", str(clean), "--snakefile", str(SNAKEFILE))
    assert again.returncode == 2 and "exists already" in again.stderr
