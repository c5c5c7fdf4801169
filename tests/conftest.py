"""Helpers for the plugin's own tests: each runs a real pytest sub-session with pytester."""

from __future__ import annotations

import textwrap

import pytest

SUBSESSION_TIMEOUT = 120.0

SIMPLE_APP = '''
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

events = []


@asynccontextmanager
async def lifespan(app):
    events.append("startup")
    yield {"greeting": "hello"}
    events.append("shutdown")


app = FastAPI(title="simple", lifespan=lifespan)


@app.get("/hello")
async def hello(request: Request):
    return {"greeting": request.state.greeting}
'''


class Project:
    """A throwaway project inside pytester's folder: ini settings, modules and tests."""

    def __init__(self, pytester: pytest.Pytester) -> None:
        self.pytester = pytester

    def ini(self, **settings: str) -> None:
        lines = ["[pytest]", "pythonpath = .", "asyncio_default_fixture_loop_scope = function"]
        lines += [f"{name} = {value}" for name, value in settings.items()]
        self.pytester.makefile(".ini", pytest="\n".join(lines) + "\n")

    def module(self, name: str, source: str) -> None:
        self.pytester.makepyfile(**{name: textwrap.dedent(source)})

    def run(self, *args: str) -> pytest.RunResult:
        return self.pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "-p", "no:randomly", *args, timeout=SUBSESSION_TIMEOUT
        )


@pytest.fixture
def project(pytester: pytest.Pytester) -> Project:
    """An empty project with the simple app module available as ``simple_app``."""
    proj = Project(pytester)
    proj.module("simple_app", SIMPLE_APP)
    return proj
