"""The package stands alone: its default config, schema and templates ship inside it, a checkout's user-facing
copies are those same files, and a regular (non-editable) install evaluates a candidate and runs the workflow from
outside the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from kernelcraft.config import DEFAULT_CONFIG_PATH, SCHEMA_PATH, TEMPLATES_DIR

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"


def test_the_checkouts_config_schema_and_templates_are_the_packages_own_files():
    assert (REPO / "config.yaml").resolve() == DEFAULT_CONFIG_PATH
    assert (REPO / "workflow" / "schemas" / "config.schema.yaml").resolve() == SCHEMA_PATH
    assert (REPO / "workflow" / "templates").resolve() == TEMPLATES_DIR
    for path in (DEFAULT_CONFIG_PATH, SCHEMA_PATH, TEMPLATES_DIR / "report.html.j2",
                 TEMPLATES_DIR / "prompts" / "ideas.j2", TEMPLATES_DIR / "prompts" / "examples" / "fast_cuda.py"):
        assert path.is_file() and not path.is_symlink(), path
        assert "kernelcraft/data" in str(path)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment with kernelcraft installed from a wheel built from this checkout; its other
    dependencies come from this environment's site-packages (a path entry, so the editable install's own .pth
    is not read there and cannot shadow the wheel)."""
    root = tmp_path_factory.mktemp("install")
    dist = root / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(REPO)], check=True, capture_output=True, timeout=600)
    wheel = next(dist.glob("kernelcraft-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: this environment's editable kernelcraft is visible through the path entry; the wheel
    # goes in beside it, never replacing it.
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
                    str(wheel)], check=True, capture_output=True, timeout=600)
    return venv


def _env(venv: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    return env


def test_a_wheel_install_finds_its_data_outside_the_checkout(installed, tmp_path):
    out = subprocess.run([str(installed / "bin" / "python"), "-c",
                          "import kernelcraft, kernelcraft.config as c; print(kernelcraft.__file__); "
                          "print(c.load_config()['rounds'], c.TEMPLATES_DIR)"],
                         cwd=tmp_path, env=_env(installed), capture_output=True, text=True, check=True)
    module, config = out.stdout.splitlines()
    assert str(installed) in module and str(REPO) not in module
    assert config.startswith("5 ") and str(installed) in config


def test_a_wheel_install_evaluates_a_candidate_from_outside_the_checkout(installed, tmp_path):
    (tmp_path / "ref.py").write_text(textwrap.dedent("""\
        import torch
        import torch.nn as nn

        class Model(nn.Module):
            def forward(self, x):
                return torch.relu(x)

        def get_inputs():
            return [torch.randn(64, 33)]

        def get_init_inputs():
            return []
        """))
    (tmp_path / "cand.py").write_text(textwrap.dedent("""\
        import torch
        import torch.nn as nn

        from kernelcraft.harness.build import c_kernel

        SRC = '''
        #include <stdint.h>
        void relu_c(const float* x, float* y, int64_t n) {
          for (int64_t i = 0; i < n; ++i) y[i] = x[i] < 0.f ? 0.f : x[i];
        }
        '''
        _relu = c_kernel(SRC, "relu_c")

        class ModelNew(nn.Module):
            def forward(self, x):
                x = x.contiguous()
                y = torch.empty_like(x)
                _relu(x, y, x.numel())
                return y
        """))
    env = _env(installed) | {"KERNELCRAFT_BUILD_DIR": str(tmp_path / "build")}
    done = subprocess.run([str(installed / "bin" / "kernelcraft"), "eval", "ref.py", "cand.py", "--device", "cpu",
                           "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    verdict = json.loads(done.stdout)
    assert verdict["compiled"] is True and verdict["correct"] is True, verdict


def test_a_wheel_install_runs_the_workflow_from_another_directory(installed, tmp_path):
    env = _env(installed) | {"KERNELCRAFT_BUILD_DIR": str(tmp_path / "build")}
    done = subprocess.run([str(installed / "bin" / "python"), "-m", "snakemake", "-s", str(SNAKEFILE),
                           "--directory", str(tmp_path), "--cores", "2", "--resources", "gpu=1", "--config",
                           "run=wheel", "rounds=1", "ideas_per_round=1", "implementations_per_idea=1",
                           "problems={builtin: [relu_4096x32768]}", "backend=cpu"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    report = tmp_path / "results" / "wheel" / "report.html"
    assert report.is_file() and "relu_4096x32768" in report.read_text()
    manifest = json.loads((tmp_path / "results" / "wheel" / "manifest.json").read_text())
    assert manifest["packages"]["kernelcraft"] == "0.1.0"
