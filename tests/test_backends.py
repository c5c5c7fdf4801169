"""One event loop per backend, backend parametrization, the guard, and how the kit is loaded."""

from __future__ import annotations

import pytest
from conftest import Project

LOOP_PROBE = """
    import asyncio
    import contextvars
    import sys

    import pytest

    from anyio_fastapi_testkit._core.backends import running_library

    seen = []
    marker = contextvars.ContextVar("marker", default="unset")


    @pytest.fixture(scope="session")
    async def session_marker(anyio_backend):
        marker.set(f"set-in-session-{anyio_backend}")
        yield


    def current_loop_id():
        if running_library() == "trio":
            import trio
            return id(trio.lowlevel.current_root_task())
        return id(asyncio.get_running_loop())


    @pytest.fixture
    async def fixture_loop():
        return current_loop_id()


    @pytest.mark.parametrize("n", range(3))
    async def test_probe(n, anyio_backend, fixture_loop, session_marker):
        assert running_library() == anyio_backend
        assert fixture_loop == current_loop_id()
        assert marker.get() == f"set-in-session-{anyio_backend}"
        seen.append((anyio_backend, current_loop_id()))


    def test_summary():
        by_backend = {}
        for backend, loop in seen:
            by_backend.setdefault(backend, set()).add(loop)
        print("LOOPS", {b: len(l) for b, l in sorted(by_backend.items())})
        assert all(len(loops) == 1 for loops in by_backend.values())
"""


MARKED = """
    import pytest

    from anyio_fastapi_testkit._core.backends import running_library

    pytestmark = pytest.mark.anyio

    async def test_marked(anyio_backend):
        assert running_library() == anyio_backend

    @pytest.mark.anyio
    async def test_marked_again():
        assert running_library() is not None
"""

FIXED = """
    import pytest

    from anyio_fastapi_testkit._core.backends import running_library

    @pytest.fixture(scope="session")
    async def shared_resource(anyio_backend):
        yield running_library()

    async def test_uses_it(shared_resource, anyio_backend):
        assert shared_resource == anyio_backend == running_library()
"""


def test_two_backends_one_loop_each_marks_quiet_guard_and_sync_tests(project: Project) -> None:
    """One sub-session for the projects on ``testkit_backends = asyncio trio`` (one module
    each, checked by name): one loop per backend shared by tests and fixtures; anyio-marked
    tests keep working; the guard stays quiet when a user's session fixture depends on the
    backend; sync tests are not parametrized."""
    project.ini(testkit_backends="asyncio trio")
    project.module("test_probe", LOOP_PROBE)
    project.module("test_marked", MARKED)
    project.module("test_fixed", FIXED)
    project.module("test_sync", "def test_plain():\n    assert True\n")
    result = project.run("-s", "-v", "-rA")
    result.assert_outcomes(passed=14)
    result.stdout.fnmatch_lines(["*LOOPS {'asyncio': 1, 'trio': 1}*"])
    for backend in ("asyncio", "trio"):
        for n in range(3):
            result.stdout.fnmatch_lines([f"PASSED test_probe.py::test_probe[[]{backend}-{n}[]]"])
        for test in ("test_marked", "test_marked_again"):
            result.stdout.fnmatch_lines([f"PASSED test_marked.py::{test}[[]{backend}[]]"])
        result.stdout.fnmatch_lines([f"PASSED test_fixed.py::test_uses_it[[]{backend}[]]"])
    result.stdout.fnmatch_lines(["PASSED test_probe.py::test_summary"])
    result.stdout.fnmatch_lines(["PASSED test_sync.py::test_plain"])


def test_guard_fails_trio_test_run_on_asyncio_by_a_users_session_fixture(
    project: Project,
) -> None:
    # Alone: the user's session fixture keeps the asyncio loop running for every later test.
    project.ini(testkit_backends="asyncio trio")
    project.module(
        "test_trap",
        """
        import pytest

        @pytest.fixture(scope="session")
        async def shared_resource():
            yield "resource"

        async def test_uses_it(shared_resource, anyio_backend):
            assert shared_resource == "resource"
        """,
    )
    result = project.run("-v")
    result.stdout.fnmatch_lines(
        [
            "*test_uses_it[[]asyncio[]] PASSED*",
            "*asked for the trio backend but is running on asyncio*",
            "*add `anyio_backend` to the arguments*",
        ]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_default_backend_is_asyncio_only_and_strict_mode_tests_stay_with_pytest_asyncio(
    project: Project,
) -> None:
    # The kit's default backends, beside pytest-asyncio in strict mode.
    project.ini(asyncio_mode="strict")
    project.module(
        "test_default",
        """
        from anyio_fastapi_testkit._core.backends import running_library

        async def test_runs(anyio_backend):
            assert anyio_backend == "asyncio" == running_library()
        """,
    )
    project.module(
        "test_mixed",
        """
        import pytest

        @pytest.mark.asyncio
        async def test_pytest_asyncio_runs_me():
            pass

        async def test_kit_runs_me(anyio_backend):
            assert anyio_backend == "asyncio"
        """,
    )
    result = project.run("-v")
    result.assert_outcomes(passed=3)
    # One backend: the tests are not parametrized, as with anyio's own anyio_backend.
    result.stdout.fnmatch_lines(["*test_default.py::test_runs PASSED*"])
    result.stdout.fnmatch_lines(["*test_mixed.py::test_pytest_asyncio_runs_me PASSED*"])
    result.stdout.fnmatch_lines(["*test_mixed.py::test_kit_runs_me PASSED*"])


def test_backends_flag_overrides_ini(project: Project) -> None:
    project.ini(testkit_backends="asyncio")
    project.module(
        "test_flag",
        """
        from anyio_fastapi_testkit._core.backends import running_library

        async def test_runs(anyio_backend):
            assert running_library() == anyio_backend
        """,
    )
    result = project.run("-v", "--testkit-backends=trio,asyncio")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_runs[[]trio[]] PASSED*"])


def test_async_tests_keep_their_own_marks(project: Project) -> None:
    project.ini(testkit_backends="asyncio trio", markers="slow: a slow test")
    project.module(
        "test_marks",
        """
        import pytest

        from anyio_fastapi_testkit._core.backends import running_library

        @pytest.mark.slow
        @pytest.mark.parametrize("n", [1, 2])
        async def test_marked(n, anyio_backend):
            assert running_library() == anyio_backend

        async def test_single_mark_attribute(anyio_backend):
            assert running_library() == anyio_backend

        test_single_mark_attribute.pytestmark = pytest.mark.slow

        class TestInClass:
            @pytest.mark.slow
            async def test_method(self, anyio_backend):
                assert running_library() == anyio_backend

            async def test_unmarked(self):
                assert running_library() is not None
        """,
    )
    result = project.run("-v", "-m", "slow", "--strict-markers")
    result.assert_outcomes(passed=8, deselected=2)
    result.stdout.fnmatch_lines(["*test_marked[[]asyncio-1[]] PASSED*"])


BACKEND_PROBE = """
    from anyio_fastapi_testkit._core.backends import running_library

    async def test_backend(anyio_backend):
        assert running_library() == anyio_backend
"""


@pytest.mark.parametrize(
    ("how", "extra_args", "conftest"),
    [
        ("entry point", (), ""),
        (
            "-p without autoload",
            ("-p", "anyio_fastapi_testkit.plugin"),
            "",
        ),
        (
            "pytest_plugins without autoload",
            (),
            'pytest_plugins = ["anyio_fastapi_testkit.plugin"]\n',
        ),
        ("-p with autoload", ("-p", "anyio_fastapi_testkit.plugin"), ""),
        ("pytest_plugins with autoload", (), 'pytest_plugins = ["anyio_fastapi_testkit.plugin"]\n'),
        ("import * in conftest", (), "from anyio_fastapi_testkit.fixtures import *\n"),
    ],
)
def test_kit_backend_fixture_wins_however_loaded(
    project: Project,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
    extra_args: tuple[str, ...],
    conftest: str,
) -> None:
    if "without autoload" in how:
        monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    project.ini(testkit_backends="asyncio trio")
    if conftest:
        project.pytester.makeconftest(conftest)
    project.module("test_how", BACKEND_PROBE)
    # As installed: the test is of how the kit is loaded. --setup-show runs the tests and
    # shows each fixture's set-up: the kit's session-scoped fixture as "S".
    result = project.run("-v", "--setup-show", *extra_args, autoload=True)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*SETUP    S anyio_backend*"])
    for backend in ("asyncio", "trio"):
        result.stdout.fnmatch_lines([f"*test_how.py::test_backend[[]{backend}[]]*PASSED*"])


@pytest.mark.parametrize("backends", ["asyncio", "trio"])
def test_a_single_backend_is_not_a_parameter(project: Project, backends: str) -> None:
    # One backend: the tests keep their plain ids (as with anyio's own anyio_backend) and still
    # run on that backend, also where a conftest.py imports the kit's fixtures (the folder
    # ``imported``; its module name differs, as there is no package).
    project.ini(testkit_backends=backends)
    project.module("test_how", BACKEND_PROBE)
    project.pytester.mkdir("imported")
    project.module("imported/conftest", "from anyio_fastapi_testkit.fixtures import *\n")
    project.module("imported/test_imported", BACKEND_PROBE)
    result = project.run("-v", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_how.py::test_backend PASSED*"])
    result.stdout.fnmatch_lines(["*imported/test_imported.py::test_backend PASSED*"])


@pytest.mark.parametrize("running", [True, False])
def test_a_trio_run_is_recognised_without_in_trio_run(running: bool) -> None:
    # trio before 0.29 has no lowlevel.in_trio_run: the guard asks for the run's token instead.
    from types import SimpleNamespace

    from anyio_fastapi_testkit._core.backends import in_trio_run

    def current_trio_token() -> object:
        if not running:
            raise RuntimeError("must be called from async context")
        return object()

    old_trio = SimpleNamespace(lowlevel=SimpleNamespace(current_trio_token=current_trio_token))
    assert in_trio_run(old_trio) is running
