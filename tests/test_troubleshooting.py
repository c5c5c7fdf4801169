"""Every error and warning message the kit raises has an entry in ``docs/troubleshooting.md``.

The messages are collected from the source with ``ast``, not from a list kept by hand: each
``raise`` of an exception class (the kit's own, pytest's ``UsageError`` and the built-in ones
the kit raises into user code), each ``pytest.fail``/``pytest.exit``, and each
``warnings.warn``/``warn_explicit`` of one of the kit's warning classes. A message is followed
through f-strings, concatenations, conditional expressions, local variables, module constants
and the kit's own functions that build it. Its entry is found by a stable phrase: the first
run of at least three words of fixed text (up to the end of its first clause), which the
troubleshooting page must contain (case, backticks and line breaks aside). A new message
without an entry fails ``test_every_message_has_an_entry``.

Messages that are not for users (an internal assertion, a misuse of a private class) are in
``NOT_FOR_USERS``, each with the reason.
"""

from __future__ import annotations

import ast
import builtins
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src" / "anyio_fastapi_testkit"
PAGE = ROOT / "docs" / "troubleshooting.md"

# Stands for the part of a message that varies.
HOLE = "\x00"
# How far a message is followed through the functions and names that build it.
DEPTH = 4

# pytest's own exception classes the kit raises, and the built-in ones it raises into user code.
RAISED_CLASSES = {"UsageError", "RuntimeError", "TypeError", "ValueError", "KeyboardInterrupt"}

# Phrases of messages that need no entry, with the reason.
NOT_FOR_USERS: dict[str, str] = {
    "the kit's statements between two tests failed": (
        "internal: re-raised inside the kit, which reports it as the server-loss or timeout "
        "message documented on the page"
    ),
    "this count_queries() block is already running": "misuse of a private class's re-entry",
    "yielded more than once": "internal assertion of the kit's fixture wrappers",
    "importing <...> in a fresh interpreter failed": (
        "the doctor's own report line, printed by --testkit-doctor, not raised"
    ),
    "this streamingasgitransport is already open": "misuse of the transport class's re-entry",
    "streamingasgitransport needs the classes of an http library": (
        "misuse of a private constructor; users get the transport from the client fixtures"
    ),
    "driver must be 'psycopg'": (
        "internal assertion: settings are validated first (testkit_database_driver)"
    ),
    "the run was asked to stop": (
        "the KeyboardInterrupt of Ctrl-C/SIGTERM itself; pytest prints it as an interrupt"
    ),
}


@dataclass(frozen=True)
class Message:
    """One way a message can read: its fixed text with ``HOLE`` for each varying part."""

    where: str
    template: str

    @property
    def phrase(self) -> str | None:
        """The message's first clause (at least three words of fixed text, at most ten), with
        ``<...>`` where it varies; None if the message has no fixed text to look for."""
        tokens = re.findall(r"\x00|[^\s\x00]+", normalize(self.template))
        clause: list[str] = []
        words = 0
        for token in tokens:
            wordy = bool(re.search(r"\w", token))
            if token == HOLE or (not wordy and not clause):
                if clause and clause[-1] != "<...>":
                    clause.append("<...>")
                continue
            if words >= 3 and token.startswith("("):
                break  # an aside; the clause before it says enough
            clause.append(token)
            words += wordy
            if words >= 10 or (words >= 3 and re.search(r"[.;:!?,]$", token)):
                break
        while clause and (clause[-1] == "<...>" or not re.search(r"\w", clause[-1])):
            clause.pop()
        if words < 3:
            return None
        return " ".join(clause).rstrip(".;:!?,")

    def pattern(self) -> re.Pattern[str] | None:
        """The phrase as a pattern: each ``<...>`` matches any short text (or a placeholder)."""
        phrase = self.phrase
        if phrase is None:
            return None
        parts = [re.escape(part.strip()) for part in phrase.split("<...>")]
        return re.compile(r"\s?.{0,80}?\s?".join(part for part in parts if part))


def normalize(text: str) -> str:
    """Lower case, without backticks, with single spaces (holes and words kept apart)."""
    text = text.replace("`", "").replace(HOLE, f" {HOLE} ").lower()
    return re.sub(r"[ \t\r\n]+", " ", text).strip()


class Collector:
    """Walks the kit's source and yields every message it raises or warns with."""

    def __init__(self, files: list[Path]) -> None:
        self.trees = {path: ast.parse(path.read_text(), str(path)) for path in files}
        self.functions: dict[str, list[tuple[Path, ast.FunctionDef | ast.AsyncFunctionDef]]] = {}
        self.constants: dict[str, list[ast.expr]] = {}
        self.classes: dict[str, ast.ClassDef] = {}
        self.parents: dict[ast.AST, ast.AST] = {}  # a function's enclosing function
        for tree in self.trees.values():
            for statement in tree.body:
                if isinstance(statement, ast.Assign | ast.AnnAssign) and statement.value:
                    targets = (
                        statement.targets
                        if isinstance(statement, ast.Assign)
                        else [statement.target]
                    )
                    for target in targets:
                        if isinstance(target, ast.Name):
                            self.constants.setdefault(target.id, []).append(statement.value)
        for path, tree in self.trees.items():
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    self.functions.setdefault(node.name, []).append((path, node))
                elif isinstance(node, ast.ClassDef):
                    self.classes[node.name] = node
        self.errors = self._subclasses({"Exception", "BaseException", "OSError"})
        self.warnings = self._subclasses({"UserWarning", "Warning"})

    def _subclasses(self, roots: set[str]) -> set[str]:
        """The kit's classes that derive from one of ``roots`` (or from a library's exception)."""
        found: set[str] = set()
        changed = True
        while changed:
            changed = False
            for name, node in self.classes.items():
                bases = {_name(base) for base in node.bases}
                if name not in found and bases & (roots | found | {"WebSocketDisconnect"}):
                    found.add(name)
                    changed = True
        return found

    def messages(self) -> Iterator[Message]:
        for path, tree in self.trees.items():
            where = (path.relative_to(ROOT) if path.is_relative_to(ROOT) else path).as_posix()
            scopes = _scopes(tree)
            self.parents.update(scopes)
            for node in ast.walk(tree):
                scope = scopes.get(node)
                for expr in self._message_nodes(node):
                    if _reraised(expr, scope):
                        continue  # a caught error's own message, collected where it is raised
                    for template in self.render(expr, scope, DEPTH):
                        if isinstance(node, ast.Assign) and not template.strip(HOLE):
                            continue  # a report's longrepr set to pytest's own, or cleared
                        yield Message(f"{where}:{getattr(node, 'lineno', 0)}", template)
            for class_name in self.errors:
                yield from self._class_messages(class_name, where, tree)

    def _class_messages(self, class_name: str, where: str, tree: ast.Module) -> Iterator[Message]:
        """Messages an exception class builds itself (``__str__``, or ``__init__``'s super)."""
        node = self.classes[class_name]
        if node not in tree.body:
            return
        for method in node.body:
            if not isinstance(method, ast.FunctionDef):
                continue
            scopes = _scopes(method)
            for inner in ast.walk(method):
                expr: ast.expr | None = None
                if method.name == "__str__" and isinstance(inner, ast.Return):
                    expr = inner.value
                elif (
                    method.name == "__init__"
                    and isinstance(inner, ast.Call)
                    and _name(inner.func) == "__init__"
                    and inner.args
                    and class_name not in ("WebSocketClosed",)  # (code, reason), as starlette's
                ):
                    expr = inner.args[0]
                if expr is not None:
                    for template in self.render(expr, scopes.get(inner, method), DEPTH):
                        yield Message(f"{where}:{getattr(inner, 'lineno', 0)}", template)

    def _message_nodes(self, node: ast.AST) -> list[ast.expr]:
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            name = _name(node.exc.func)
            own_message = name in self.errors and self._builds_own_message(name)
            if (name in self.errors or name in RAISED_CLASSES) and not own_message:
                return _first_argument(node.exc, "msg")
        if isinstance(node, ast.Assign) and any(
            _name(target) in ("longrepr", "shouldfail", "shouldstop") for target in node.targets
        ):
            return [node.value]  # a test's report, or the reason the session stops
        if isinstance(node, ast.Call):
            func = _dotted(node.func)
            if func in ("pytest.fail", "pytest.exit", "pytest.fail.Exception", "pytest.skip"):
                return _first_argument(node, "reason")
            if func in ("warnings.warn", "warnings.warn_explicit"):
                args = node.args
                if args and isinstance(args[0], ast.Call) and _name(args[0].func) in self.warnings:
                    return _first_argument(args[0], "message")
                category = args[1] if len(args) > 1 else _keyword(node, "category")
                if category is not None and _name(category) in self.warnings:
                    return args[:1]
        return []

    def _builds_own_message(self, class_name: str) -> bool:
        return any(
            isinstance(method, ast.FunctionDef) and method.name in ("__str__", "__init__")
            for method in self.classes[class_name].body
        )

    def render(self, node: ast.expr | None, scope: ast.AST | None, depth: int) -> list[str]:
        """Every way ``node`` can read, with ``HOLE`` where it varies."""
        if node is None or depth < 0:
            return [HOLE]
        if isinstance(node, ast.Constant):
            return [node.value] if isinstance(node.value, str) else [HOLE]
        if isinstance(node, ast.JoinedStr):
            parts = [
                [str(value.value)] if isinstance(value, ast.Constant) else [HOLE]
                for value in node.values
            ]
            return ["".join(combination) for combination in itertools.product(*parts)]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left = self.render(node.left, scope, depth)
            right = self.render(node.right, scope, depth)
            return [a + b for a, b in itertools.product(left, right)]
        if isinstance(node, ast.IfExp):
            return self.render(node.body, scope, depth) + self.render(node.orelse, scope, depth)
        if isinstance(node, ast.Name):
            return self._render_name(node.id, scope, depth)
        if isinstance(node, ast.Call):
            return self._render_call(node, depth)
        return [HOLE]

    def _render_name(self, name: str, scope: ast.AST | None, depth: int) -> list[str]:
        rendered: list[str] = []
        while scope is not None and not rendered:  # this function, then those around it
            for inner in ast.walk(scope):
                if not isinstance(inner, ast.Assign):
                    continue
                for target in inner.targets:
                    if isinstance(target, ast.Name) and target.id == name:
                        rendered += self.render(inner.value, scope, depth - 1)
                    elif isinstance(target, ast.Tuple):  # message, where = report(...)
                        names = [_name(element) for element in target.elts]
                        if name in names:
                            index = names.index(name)
                            rendered += self._render_element(inner.value, index, scope, depth)
            outer = self.parents.get(scope)
            scope = outer if outer is not scope else None
        if not rendered:
            for value in self.constants.get(name, []):
                rendered += self.render(value, None, depth - 1)
        return rendered or [HOLE]

    def _render_element(
        self, value: ast.expr, index: int, scope: ast.AST | None, depth: int
    ) -> list[str]:
        if isinstance(value, ast.Tuple) and index < len(value.elts):
            return self.render(value.elts[index], scope, depth - 1)
        if isinstance(value, ast.Call):
            return self._render_call(value, depth, index)
        return [HOLE]

    def _render_call(self, node: ast.Call, depth: int, index: int | None = None) -> list[str]:
        name = _name(node.func)
        if name == "format" and isinstance(node.func, ast.Attribute):  # "... {driver} ...".format
            templates = self.render(node.func.value, None, depth - 1)
            return [re.sub(r"\{[^{}]*\}", HOLE, template) for template in templates]
        if name in dir(builtins) or name in ("join", "strip", "lower"):
            return [HOLE]
        rendered: list[str] = []
        for _, function in self.functions.get(name, []):
            for inner in ast.walk(function):
                if isinstance(inner, ast.Return) and inner.value is not None:
                    if index is None:
                        rendered += self.render(inner.value, function, depth - 1)
                    else:
                        rendered += self._render_element(inner.value, index, function, depth)
        # Alternatives without fixed text come from functions of the same name elsewhere.
        worded = [text for text in rendered if re.search(r"\w", text.replace(HOLE, ""))]
        return worded or rendered or [HOLE]


def _reraised(expr: ast.expr, scope: ast.AST | None) -> bool:
    """Whether ``expr`` is the message of an exception the enclosing function caught."""
    if scope is None:
        return False
    caught = {
        handler.name
        for handler in ast.walk(scope)
        if isinstance(handler, ast.ExceptHandler) and handler.name
    }
    if isinstance(expr, ast.Call) and _name(expr.func) == "str" and expr.args:
        return _name(expr.args[0]) in caught
    if isinstance(expr, ast.JoinedStr) and expr.values:
        first = expr.values[0]
        return isinstance(first, ast.FormattedValue) and _name(first.value) in caught
    return False


def _scopes(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    """The innermost function around each node."""
    scopes: dict[ast.AST, ast.AST] = {}

    def visit(node: ast.AST, scope: ast.AST | None) -> None:
        for child in ast.iter_child_nodes(node):
            inner: ast.AST | None = (
                child if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else scope
            )
            around = scope if child is inner else inner  # a function: the one around it
            if around is not None:
                scopes[child] = around
            visit(child, inner)

    visit(tree, tree if isinstance(tree, ast.FunctionDef) else None)
    return scopes


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return _name(node)


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((keyword.value for keyword in call.keywords if keyword.arg == name), None)


def _first_argument(call: ast.Call, keyword: str) -> list[ast.expr]:
    if call.args:
        return [call.args[0]]
    value = _keyword(call, keyword)
    return [value] if value is not None else []


def _collect(files: list[Path]) -> list[Message]:
    return sorted(set(Collector(files).messages()), key=lambda m: (m.where, m.template))


def _missing(messages: list[Message], page: str) -> list[str]:
    text = normalize(page)
    missing = []
    for message in messages:
        pattern = message.pattern()
        if pattern is None:
            missing.append(f"{message.where}: no fixed text to look for: {message.template!r}")
        elif not pattern.search(text) and message.phrase not in NOT_FOR_USERS:
            missing.append(f"{message.where}: {message.phrase!r}")
    return missing


@pytest.fixture(scope="module")
def messages() -> list[Message]:
    return _collect(sorted(SOURCE.rglob("*.py")))


def test_every_message_has_an_entry(messages: list[Message]) -> None:
    missing = _missing(messages, PAGE.read_text())
    assert not missing, (
        "These messages have no entry in docs/troubleshooting.md (add one with the message's "
        "first sentence as its heading, its cause and every fix; or, for a message no user "
        "can meet, add its phrase to NOT_FOR_USERS with the reason):\n" + "\n".join(missing)
    )


def test_the_collector_finds_every_kind_of_message(messages: list[Message]) -> None:
    phrases = {message.phrase for message in messages}
    for expected in (
        "is not a number of seconds",  # raise ConfigError(f"...")
        "anyio-fastapi-testkit supports posix systems only",  # raise pytest.UsageError(...)
        "asked for the",  # pytest.fail(f"...")
        "the kit's cached cluster in",  # warnings.warn(CacheWarning(...))
        "the app rejected the websocket connection to",  # an exception's own __str__
        "no postgresql server for the test databases",  # a message built by a function
    ):
        assert any(phrase and phrase.startswith(expected) for phrase in phrases), expected
    assert len(messages) > 100


def test_a_new_message_without_an_entry_fails(tmp_path: Path) -> None:
    module = tmp_path / "module.py"
    module.write_text(
        "import warnings\n"
        "class ConfigError(Exception): ...\n"
        "class NewWarning(UserWarning): ...\n"
        "def message(n):\n"
        "    return f'{n} gadgets were found left over in the drawer.'\n"
        "def check(value):\n"
        "    if value:\n"
        "        raise ConfigError(f'testkit_gadget = {value!r} is not a known gadget.')\n"
        "    note = message(3)\n"
        "    warnings.warn(note, NewWarning)\n"
    )
    messages = _collect([module])
    assert {message.phrase for message in messages} == {
        "testkit_gadget = <...> is not a known gadget",
        "gadgets were found left over in the drawer",
    }
    page = "### `testkit_gadget = <value> is not a known gadget`\n\nFix it.\n"
    missing = _missing(messages, page)
    assert [line.rsplit(": ", 1)[1] for line in missing] == [
        "'gadgets were found left over in the drawer'"
    ]
    page += "\n### `<n> gadgets were found left over in the\ndrawer`\n"
    assert _missing(messages, page) == []


def test_every_message_that_needs_no_entry_is_still_raised(messages: list[Message]) -> None:
    phrases = [message.phrase or "" for message in messages]
    stale = [allowed for allowed in NOT_FOR_USERS if not any(allowed in p for p in phrases)]
    assert not stale, f"NOT_FOR_USERS names messages the kit no longer raises: {stale}"
