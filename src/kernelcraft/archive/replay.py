"""Re-run an archived run into a new run: the same configuration, the same effective models, the problem files from
the archive, every model answer from the archive's transcripts (no key, no network) and each round's selection as
the archived run made it, so the new run writes the same candidates byte for byte and reaches the same verdicts;
times differ only by noise."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import yaml

from kernelcraft.archive.bundle import PROBLEMS, ArchiveError, extract_archive, read_archive


def replay_config(manifest: dict, source: Path, run: str) -> dict:
    """The archived run's configuration for a replay into ``run``: its models as they actually ran (a model whose
    key was missing ran as the offline proposer, and must replay as it), its problems from the archive's copies,
    and its model answers from ``source`` (the extracted archive)."""
    config = json.loads(json.dumps(manifest.get("config") or {}))
    if not config:
        raise ArchiveError("the archive's manifest holds no configuration; it cannot be replayed")
    config["run"] = run
    models = manifest.get("models") or {}
    for role in ("ideas", "implement"):
        if models.get(role):
            config.setdefault("models", {})[role] = models[role]
    config.setdefault("problems", {}).update({"builtin": [], "dirs": [str(source / PROBLEMS)], "include": None,
                                              "exclude": None, "size": manifest.get("size", "auto")})
    config["backend"] = manifest.get("backend", config.get("backend", "auto"))
    # Model answers from the archive's transcripts, and each round's selection as the archived run made it.
    config.setdefault("llm", {})["replay"] = str(source)
    return config


def replay(archive: Path, run: str | None = None, directory: Path = Path("."), snakefile: Path | None = None,
           cores: int = 2) -> Path:
    """Replay ``archive`` into ``directory/results/<run>`` and return that run's directory."""
    name, files = read_archive(archive)
    if not any(rel.startswith(f"{PROBLEMS}/") for rel in files):
        raise ArchiveError(f"{archive} holds no problem files (made by an older kernelcraft); archive the run again")
    manifest = json.loads(files["manifest.json"])
    if manifest.get("backend") == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ArchiveError(f"{archive} is a run of the cuda backend and no GPU is visible here; replay it on a "
                               "machine with a GPU")
    directory = Path(directory).resolve()
    snakefile = Path(snakefile) if snakefile else Path("workflow") / "Snakefile"
    if not snakefile.is_file():
        raise ArchiveError(f"no Snakefile at {snakefile}: run 'kernelcraft replay' from the workflow's checkout or "
                           "pass --snakefile")
    run = run or f"{name}-replay"
    if (directory / "results" / run).exists():
        raise ArchiveError(f"{directory / 'results' / run} exists already; pass --run with a new name")
    # The archive's content (already read and checked), not its bytes on disk again, names the extraction.
    content = hashlib.sha256()
    for rel in sorted(files):
        content.update(f"{rel}\0{hashlib.sha256(files[rel]).hexdigest()}\n".encode())
    digest = content.hexdigest()[:12]
    sources = directory / "replays" / f"{name}-{digest}"
    source = sources / name if (sources / name).is_dir() else extract_archive(archive, sources)
    config_path = directory / "replays" / f"{run}.yaml"
    config_path.write_text(yaml.safe_dump(replay_config(manifest, source, run), sort_keys=False))
    done = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(snakefile.resolve()), "--directory",
                           str(directory), "--configfile", str(config_path), "--cores", str(cores), "--resources",
                           "gpu=1"], check=False)
    if done.returncode != 0:
        raise ArchiveError(f"the replay's workflow failed (exit {done.returncode}); see its log above, and resume "
                           f"with the same command and --run {run} removed from results first")
    return directory / "results" / run
