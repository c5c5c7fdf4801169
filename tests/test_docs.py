"""The documentation's examples run as written, and the site builds without a warning.

Every fenced block whose title is a file path (```` ```python title="tests/test_items.py" ````)
is a file of a small project. The app of the getting-started page (its ``myproject/`` files,
and its ``pyproject.toml`` for pages that show none) is the base of every page's project; a
page's own titled files are added to it or replace its files. Each configuration file a page
shows (``pyproject.toml``, ``pytest.ini``, ``tox.ini``, ``setup.cfg``) is one variant: the
page's tests run with its first (``pyproject.toml`` where it shows one), and each other
variant must give the kit the very same settings (parsed by pytest from that file alone), so
its run would be the same run. Blocks without a file-path title (fragments, console
sessions, the "before" side of a migration) are not run.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import SUBSESSION_TIMEOUT, SubsessionShare, run_subsession

from anyio_fastapi_testkit._core.config import add_options, read_settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BASE_PAGE = DOCS / "getting-started.md"
CONFIG_FILES = ("pyproject.toml", "pytest.ini", "tox.ini", "setup.cfg")

# ```python title="path" ... ``` with any fence length of three or more backticks.
_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<info>[^\n`]*)\n"
    r"(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
_TITLE = re.compile(r'title="(?P<title>[^"]+)"')
_PATH = re.compile(r"^[\w.-]+(/[\w.-]+)*\.(py|toml|ini|cfg|mako)$")
_TEST_FUNCTION = re.compile(r"^(?:async )?def (test_\w+)\(", re.MULTILINE)


@dataclass
class Page:
    """The runnable files of one Markdown page."""

    path: Path
    files: dict[str, str] = field(default_factory=dict)
    configs: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.relative_to(ROOT).as_posix()


def read_page(path: Path) -> Page:
    page = Page(path)
    for block in _BLOCK.finditer(path.read_text(encoding="utf-8")):
        title = _TITLE.search(block["info"])
        if title is None or not _PATH.match(title["title"]):
            continue
        indent = block["indent"]
        lines = block["body"].splitlines(keepends=True)
        body = "".join(line[len(indent) :] if line.startswith(indent) else line for line in lines)
        name = title["title"]
        target = page.configs if name in CONFIG_FILES else page.files
        if name in target:
            raise AssertionError(f"{page.name} shows {name} twice: give one a different title")
        target[name] = body
    return page


def doc_pages() -> list[Path]:
    return sorted([ROOT / "README.md", *DOCS.rglob("*.md")])


def runnable_pages() -> list[Page]:
    pages = [read_page(path) for path in doc_pages()]
    return [page for page in pages if any(_TEST_FUNCTION.search(s) for s in page.files.values())]


def run_config(page: Page) -> str:
    """The configuration file the page's tests run with: its pyproject.toml, else its first."""
    if "pyproject.toml" in page.configs or not page.configs:
        return "pyproject.toml"
    return next(iter(page.configs))


def variants() -> list[pytest.param]:
    """Each page once, with the configuration file its tests run with."""
    params = []
    for page in runnable_pages():
        config = run_config(page)
        params.append(pytest.param(page, config, id=f"{page.name}:{config}"))
    return params


def other_configs() -> list[pytest.param]:
    """Each other configuration file a page shows, with the one its tests run with."""
    params = []
    for page in runnable_pages():
        ran = run_config(page)
        for config in page.configs:
            if config != ran:
                params.append(pytest.param(page, config, ran, id=f"{page.name}:{config}"))
    return params


def write_project(folder: Path, page: Page, config: str) -> int:
    """The base app, then the page's files and one configuration file; the number of tests."""
    base = read_page(BASE_PAGE)
    app_files = {name: text for name, text in base.files.items() if name.startswith("myproject/")}
    files = {**app_files, **page.files}
    config_text = page.configs.get(config) or base.configs["pyproject.toml"]
    files[config] = config_text
    for name, text in files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    for package in {Path(name).parent for name in files if name.endswith(".py")}:
        if package != Path(".") and not (folder / package / "__init__.py").exists():
            (folder / package / "__init__.py").write_text("", encoding="utf-8")
    tests = [text for name, text in files.items() if Path(name).name.startswith("test_")]
    return sum(len(_TEST_FUNCTION.findall(text)) for text in tests)


def test_the_docs_have_runnable_examples() -> None:
    names = {page.name for page in runnable_pages()}
    assert "docs/getting-started.md" in names
    assert "README.md" in names
    base = read_page(BASE_PAGE)
    assert {"myproject/main.py", "myproject/db.py", "myproject/models.py"} <= set(base.files)
    assert "pyproject.toml" in base.configs


@pytest.mark.parametrize(("page", "config"), variants())
@pytest.mark.usefixtures("no_configured_server")
def test_doc_example_passes(
    page: Page,
    config: str,
    pytester: pytest.Pytester,
    subsession_share: SubsessionShare,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected = write_project(pytester.path, page, config)
    # With the embedded server of one cached cluster that the examples share (initdb once;
    # each page's schema makes its own template in it). The getting-started page runs as
    # installed (plugins autoloaded); the others load the kit by name alone, as the pages
    # need no other plugin (loading every installed one costs a run more than its tests).
    monkeypatch.setenv("TMPDIR", str(subsession_share.tmpdir))
    plugins: tuple[str, ...] = ()
    if page.path != BASE_PAGE:
        monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
        plugins = ("-p", "anyio_fastapi_testkit.plugin")
    result = run_subsession(
        pytester,
        [
            *plugins,
            "-o",
            f"cache_dir={subsession_share.cache_dir}",
            "-p",
            "no:randomly",
            "-p",
            "no:asyncio",
            "-c",
            config,
            "--rootdir",
            str(pytester.path),
        ],
    )
    output = "\n".join(result.outlines + result.errlines)
    outcomes = result.parseoutcomes()
    assert result.ret == 0, output
    assert outcomes.get("passed") == expected, output
    assert set(outcomes) == {"passed"}, output


class _KitOptions:
    """The kit's options and ini settings alone: the plugin itself is not loaded, as it would
    prepare the test database when it finds testkit_database_env."""

    def pytest_addoption(self, parser: pytest.Parser) -> None:
        add_options(parser)


@pytest.mark.parametrize(("page", "config", "ran"), other_configs())
def test_doc_config_variant_gives_the_same_settings(
    page: Page, config: str, ran: str, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a run with this file would differ in from the run with `ran`: the settings pytest
    # reads from it, which the kit resolves (each format's lists, line breaks and quoting).
    write_project(pytester.path, page, ran)
    write_project(pytester.path, page, config)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("TESTKIT_DATABASE_URL", raising=False)
    pytester.plugins.append(_KitOptions())
    settings = {}
    for name in (ran, config):
        parsed = pytester.parseconfig("--noconftest", "-c", name, "--rootdir", str(pytester.path))
        assert parsed.inipath is not None and parsed.inipath.name == name
        settings[name] = read_settings(parsed)
    assert settings[ran].app is not None and settings[ran].database_env, settings[ran]
    assert settings[config] == settings[ran]


MKDOCS = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or MKDOCS is None,
    reason="mkdocs is not installed (pip install -e . --group docs)",
)
def test_the_site_builds_without_a_warning(tmp_path: Path) -> None:
    assert MKDOCS is not None
    completed = subprocess.run(
        [MKDOCS, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SUBSESSION_TIMEOUT,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "WARNING" not in output, output
