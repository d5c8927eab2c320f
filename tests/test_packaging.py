"""The package as a user gets it: `python -m build` makes an sdist and, from it, a wheel;
the wheel installs into a fresh venv (its dependencies from the package index, through
pip's own cache) and `nrm --help` and `nrm demo` run from there, outside the source tree."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from runtime.version import VERSION

ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL = {"keys", "runtime", "agents", "broker", "nrm"}


@pytest.mark.timeout(600)
def test_the_wheel_installs_into_a_clean_venv_and_runs_the_demo(tmp_path: Path) -> None:
    """sdist and wheel build; the wheel holds every subpackage and the package data the
    services read (schemas, ledger UI) and nothing else; installed alone it runs the demo."""
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
    )
    [wheel] = dist.glob("nrm_exchange-*.whl")
    [sdist] = dist.glob("nrm_exchange-*.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} - TOP_LEVEL == {
        wheel.name.split("-py3")[0] + ".dist-info"
    }
    for needed in (
        "agents/storage/__init__.py",
        "agents/schemas/referral-v1.schema.json",
        "agents/schemas/referral-v2.schema.json",
        "agents/schemas/consent-receipt-v1.schema.json",
        "broker/ledger_ui/index.html",
        "broker/ledger_ui/app.js",
    ):
        assert needed in names
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[-1] for m in tar.getmembers()}
    assert {"pyproject.toml", "README.md", "agents/storage/__init__.py"} <= members

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"  # not the source tree: only the wheel is importable
    elsewhere.mkdir()
    nrm = str(venv / "bin" / "nrm")
    shown = subprocess.run(
        [nrm, "--help"], cwd=elsewhere, check=True, capture_output=True, text=True
    )
    for group in ("agent", "ledger", "bus", "directory", "demo"):
        assert group in shown.stdout
    version = subprocess.run([nrm, "--version"], cwd=elsewhere, capture_output=True, text=True)
    assert version.stdout == f"nrm {VERSION}\n"  # the wheel's own metadata, not the tree's
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import nrm, broker.ledger_http as h; "
         "print(nrm.__file__); print(h.UI_DIR / 'index.html')"],
        cwd=elsewhere, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    assert all(p.startswith(str(venv)) and Path(p).exists() for p in where)
    demo = subprocess.run([nrm, "demo"], cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "signature verified; every agent proved its events are included" in demo.stdout
