"""The built wheel and sdist: what they hold, their metadata, and ``twine check``.

Built once per module with ``python -m build --no-isolation`` (the build backend, hatchling,
comes with the ``test`` dependency group, so no download is needed); the sdist is built first
and the wheel from it, so the wheel test also shows the sdist is complete enough to build.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from email.message import Message
from email.parser import BytesParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "anyio_fastapi_testkit"
NAME = "anyio_fastapi_testkit-0.1.0"

URLS = ("Homepage", "Documentation", "Source", "Issues", "Changelog")
CLASSIFIERS = (
    "Development Status :: 4 - Beta",
    "Framework :: FastAPI",
    "Framework :: Pytest",
    "Operating System :: POSIX",
    "Programming Language :: Python :: 3.10",
    "Programming Language :: Python :: 3.11",
    "Programming Language :: Python :: 3.12",
    "Programming Language :: Python :: 3.13",
    "Topic :: Software Development :: Testing",
    "Typing :: Typed",
)


def _module_files() -> set[str]:
    """The package's source files, as paths inside the wheel."""
    return {
        path.relative_to(PACKAGE.parent).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".typed")
    }


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(path.name for path in out.iterdir()) == [
        f"{NAME}-py3-none-any.whl",
        f"{NAME}.tar.gz",
    ]
    return out


def _metadata(dist: Path) -> Message:
    with zipfile.ZipFile(dist / f"{NAME}-py3-none-any.whl") as wheel:
        return BytesParser().parsebytes(wheel.read(f"{NAME}.dist-info/METADATA"))


def test_twine_check_passes(dist: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, sorted(dist.iterdir()))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASSED") == 2, done.stdout


def test_the_wheel_holds_every_module_the_license_and_the_plugin(dist: Path) -> None:
    with zipfile.ZipFile(dist / f"{NAME}-py3-none-any.whl") as wheel:
        names = set(wheel.namelist())
        entry_points = wheel.read(f"{NAME}.dist-info/entry_points.txt").decode()
    subpackages = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}
    assert {"_core", "_postgres", "_provisioning", "_isolation", "_http", "_diagnostics"} <= (
        subpackages
    )
    assert _module_files() - names == set()
    assert "anyio_fastapi_testkit/py.typed" in names
    assert f"{NAME}.dist-info/licenses/LICENSE" in names
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    assert not [
        name
        for name in names
        if name.split("/")[0] not in ("anyio_fastapi_testkit", f"{NAME}.dist-info")
    ]
    assert "anyio_fastapi_testkit.plugin = anyio_fastapi_testkit.plugin" in entry_points


def test_the_wheel_metadata(dist: Path) -> None:
    metadata = _metadata(dist)
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert metadata["Requires-Python"] == ">=3.10"
    urls = dict(url.split(", ", 1) for url in metadata.get_all("Project-URL") or [])
    assert sorted(urls) == sorted(URLS)
    assert all(url.startswith("https://") for url in urls.values())
    assert set(CLASSIFIERS) - set(metadata.get_all("Classifier") or []) == set()
    assert not [c for c in metadata.get_all("Classifier") or [] if c.startswith("License ::")]
    # What users install are extras; what the kit's own tests, docs and development need are
    # dependency groups, which are not published.
    extras = metadata.get_all("Provides-Extra") or []
    assert "embedded" in extras
    assert not [extra for extra in extras if extra in ("test", "docs", "dev")], extras
    requires = metadata.get_all("Requires-Dist") or []
    assert not [r for r in requires if "pytest-xdist" in r or "mkdocs" in r or "ruff" in r]
    # The long description is the README, rendered as Markdown on the package index.
    assert metadata["Description-Content-Type"] == "text/markdown"
    # The body is UTF-8 (the README is not ASCII); read it as bytes, as an index does.
    body = metadata.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert body.decode() == (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_sdist_holds_the_license_readme_changelog_and_sources(dist: Path) -> None:
    with tarfile.open(dist / f"{NAME}.tar.gz") as sdist:
        names = {name.removeprefix(f"{NAME}/") for name in sdist.getnames()}
    expected = {"LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "PKG-INFO"}
    assert expected - names == set()
    assert {f"src/{name}" for name in _module_files()} - names == set()
    assert "tests/conftest.py" in names
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
