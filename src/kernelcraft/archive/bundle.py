"""One ``.tar.gz`` per run: everything the run wrote that says what it did (config and manifest, transcripts,
every candidate's source, verdicts, measurements, logs, the report), with a ``SHA256SUMS`` list inside.

Reading an archive checks every member against that list before anything is used, so a truncated, corrupted or
edited archive is refused with one line instead of replaying or comparing something else than what was run. The
archive is deterministic: members sorted, owners and times zeroed, so the same run gives the same bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path, PurePosixPath

SUMS = "SHA256SUMS"
PROBLEMS = "problems"  # inside the archive: a copy of each problem's reference file
# Build products and scratch space: rebuilt from the sources, and machine-specific.
SKIPPED = {"build", "tmp", "__pycache__"}


class ArchiveError(ValueError):
    """An archive that cannot be used; the message is one line saying why and what to do."""


def _members(run: Path) -> list[tuple[str, Path]]:
    out = []
    for path in sorted(run.rglob("*")):
        rel = path.relative_to(run)
        if path.is_file() and not path.is_symlink() and not SKIPPED.intersection(rel.parts):
            out.append((rel.as_posix(), path))
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_archive(run: Path, out: Path | None = None) -> Path:
    """Archive the run directory ``run`` (``results/<name>``) to ``out`` (default ``<run>.tar.gz`` beside it)."""
    run = Path(run)
    if not (run / "manifest.json").is_file():
        raise ArchiveError(f"{run} is not a finished run (no manifest.json): pass a results/<run> directory whose "
                           "workflow has completed")
    out = Path(out) if out is not None else run.with_name(run.name + ".tar.gz")
    members = [(rel, path.read_bytes()) for rel, path in _members(run)]
    # The problem files themselves (built-in or from a KernelBench checkout), so the run can be replayed where
    # those directories do not exist.
    problems = (json.loads((run / "manifest.json").read_text()).get("problems") or {})
    for pid, source in sorted(problems.items()):
        if Path(source).is_file() and f"{PROBLEMS}/{pid}.py" not in dict(members):
            members.append((f"{PROBLEMS}/{pid}.py", Path(source).read_bytes()))
    members.sort()
    sums = "".join(f"{_sha256(data)}  {rel}\n" for rel, data in members).encode()
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for rel, data in [(SUMS, sums), *members]:
            info = tarfile.TarInfo(f"{run.name}/{rel}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, out)
    return out


def read_archive(path: Path) -> tuple[str, dict[str, bytes]]:
    """The run's name and its files (relative path -> bytes), every one checked against ``SHA256SUMS``."""
    path = Path(path)
    again = "make it again with 'kernelcraft archive RUN'"
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            files: dict[str, bytes] = {}
            names = set()
            for info in tar:
                parts = PurePosixPath(info.name).parts
                if not info.isfile() or info.name.startswith("/") or ".." in parts or len(parts) < 2:
                    raise ArchiveError(f"{path}: member {info.name!r} is not a plain file inside the run's folder; "
                                       f"refusing it ({again})")
                names.add(parts[0])
                handle = tar.extractfile(info)
                files["/".join(parts[1:])] = handle.read() if handle else b""
    except ArchiveError:
        raise
    except FileNotFoundError:
        raise ArchiveError(f"{path}: no such archive") from None
    except (tarfile.TarError, OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ArchiveError(f"{path} is truncated or not a .tar.gz ({type(exc).__name__}); {again}") from None
    if len(names) != 1:
        raise ArchiveError(f"{path} holds {len(names)} top-level folders, not one run; {again}")
    if SUMS not in files:
        raise ArchiveError(f"{path} has no {SUMS} list, so its contents cannot be checked; {again}")
    listed: dict[str, str] = {}
    for line in files.pop(SUMS).decode(errors="replace").splitlines():
        digest, _, rel = line.partition("  ")
        listed[rel] = digest
    for rel, data in files.items():
        if rel not in listed:
            raise ArchiveError(f"{path}: {rel} is not in {SUMS} (the archive was altered); {again}")
        if _sha256(data) != listed[rel]:
            raise ArchiveError(f"{path}: {rel} does not match its checksum (the archive was altered or damaged); "
                               f"{again}")
    missing = sorted(set(listed) - set(files))
    if missing:
        raise ArchiveError(f"{path}: {len(missing)} listed file(s) are missing, e.g. {missing[0]}; {again}")
    if "manifest.json" not in files:
        raise ArchiveError(f"{path} holds no manifest.json: not a kernelcraft run archive")
    return names.pop(), files


def extract_archive(path: Path, dest: Path) -> Path:
    """Check ``path`` and write its run into ``dest/<run name>``; the run's directory is returned."""
    name, files = read_archive(path)
    root = Path(dest) / name
    if root.exists() and any(root.iterdir()):
        raise ArchiveError(f"{root} already exists and is not empty; extract somewhere else")
    for rel, data in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root
