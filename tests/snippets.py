"""The documentation's Python blocks, collected and run as tests (tests/test_docs_snippets.py).

Every fenced ``python`` block of README.md and docs/**/*.md is a test. The conventions, also
written down for readers in docs/getting-started.md ("About the examples"):

- **Complete programs** (a top-level ``anyio.run(...)``, ``trio.run(...)`` or
  ``asyncio.run(...)``) run as scripts; ``anyio.run`` is run once per backend.
- **Everything else** runs as notebook code: top-level ``await``, ``async with`` and
  ``async for`` are allowed, on both backends.
- **Stand-ins.** A block may use the names the prose introduces (``my_agent``, ``question``,
  ``questions``, ``tasks``, ``researcher``, ...): ``STANDINS`` below defines them, offline. A
  block with no import statement also sees every name of ``murmur.__all__``; a block that
  imports anything must import the Murmur names it uses (checked).
- **Offline models.** A model string given to an ``Agent(...)`` call (``model="openai:gpt-4o"``
  or pydantic-ai's positional one) is replaced by pydantic-ai's ``TestModel()``, which
  answers with data of the agent's output type. No key, no network.
- **Brokers.** A broker URL in a block (``redis://``, ``nats://``, ``amqp://``, ``kafka://``)
  is replaced by the local Redis's, in a namespace of its own (``MURMUR_NAMESPACE``); when
  the block calls an agent, the test first starts ``murmur worker start --app
  myproject.agents`` (tests/myproject/agents.py) on it, and stops it and deletes the
  namespace's keys afterwards.
- **Output.** A comment on a ``print(...)`` line is what that line prints: its outputs,
  joined by ``", "`` when it runs more than once, must match the comment, where ``...``
  stands for anything. A ``print`` line with such a comment that never runs fails the test.
- **Directives**, in an HTML comment on the line before the fence (invisible on the site),
  separated by ``;``:

  - ``<!-- docs-test: compile-only: REASON -->``: compiled, not run (a block that needs a
    real provider key, a package Murmur does not install, or a real terminal);
  - ``<!-- docs-test: backends=asyncio -->``: run on these backends only;
  - ``<!-- docs-test: sse-client=http://127.0.0.1:8765/ -->``: while the block runs, a real
    HTTP client (httpx, in a thread) connects to that URL and reads the stream to its end;
  - ``<!-- docs-test: feed-sse -->``: once the block subscribes to the stand-in ``sse``, a
    small batch of the stand-in ``writer`` (one task fails) runs with ``sse`` as its
    emitter, and then ``sse`` is closed.
"""

from __future__ import annotations

import ast
import io
import re
import sys
import threading
import tokenize
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: The pages whose blocks run: the README and every page of the site.
PAGES = ("README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md")))

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<ticks>```+|~~~+)\s*(?P<lang>[\w+-]*)")
_DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(?P<body>.*?)\s*-->")
_BROKER_URL = re.compile(r"\b(?:redis|rediss|nats|tls|amqp|amqps|kafka)://[^\"'\s)]*")
_RUNNERS = {("anyio", "run"), ("trio", "run"), ("asyncio", "run")}


@dataclass
class Block:
    """One fenced ``python`` block of a page."""

    page: str
    #: 1-based line of the block's first line of code in the page.
    line: int
    source: str
    directives: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def tree(self) -> ast.Module:
        return ast.parse(self.source, self.page)

    def runner(self) -> str | None:
        """``"anyio"``, ``"trio"`` or ``"asyncio"`` when the block is a complete program."""
        for node in self.tree.body:
            if (
                isinstance(node, ast.Expr)
                and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Attribute)
                and isinstance(node.value.func.value, ast.Name)
                and (node.value.func.value.id, node.value.func.attr) in _RUNNERS
            ):
                return node.value.func.value.id
        return None

    def backends(self) -> tuple[str, ...]:
        if "backends" in self.directives:
            return tuple(b.strip() for b in self.directives["backends"].split(","))
        runner = self.runner()
        if runner in ("trio", "asyncio"):
            return (runner,)
        return ("asyncio", "trio")

    def uses_broker(self) -> bool:
        return bool(_BROKER_URL.search(self.source))

    def calls_agents(self) -> bool:
        return any(f".{call}(" in self.source for call in ("run", "gather", "run_group"))

    def compile(self, source: str | None = None) -> Any:
        """The block's code, with its page's line numbers (tracebacks point at the page)."""
        padded = "\n" * (self.line - 1) + (self.source if source is None else source)
        return compile(padded, self.page, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def collect(page: str) -> list[Block]:
    """The ``python`` blocks of ``page`` (a path relative to the repository)."""
    lines = (REPO / page).read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        indent, ticks = fence["indent"], fence["ticks"]
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(ticks):
            end += 1
        if fence["lang"] in ("python", "py"):
            body = [line.removeprefix(indent) for line in lines[i + 1 : end]]
            directives: dict[str, str] = {}
            if i > 0 and (found := _DIRECTIVE.search(lines[i - 1])):
                for item in found["body"].split(";"):
                    key, sep, value = item.strip().partition("=")
                    if not sep:
                        key, _, value = item.strip().partition(":")
                    directives[key.strip()] = value.strip()
            blocks.append(Block(page, i + 2, "\n".join(body) + "\n", directives))
        i = end + 1
    return blocks


def all_blocks() -> list[Block]:
    return [block for page in PAGES for block in collect(page)]


# -- checks that need no running -------------------------------------------------------------


def _bound_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                names.add((alias.asname or alias.name).split(".")[0])
    return names


def imports_anything(block: Block) -> bool:
    return any(isinstance(n, ast.Import | ast.ImportFrom) for n in ast.walk(block.tree))


def unimported_murmur_names(block: Block) -> set[str]:
    """Names of ``murmur.__all__`` a block that imports things uses without importing."""
    import murmur

    if not imports_anything(block):
        return set()
    tree = block.tree
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return (used & set(murmur.__all__)) - _bound_names(tree)


def expected_outputs(block: Block) -> dict[int, str]:
    """``{page line: comment}`` for each ``print(...)`` line that ends with a comment."""
    found: dict[int, str] = {}
    tokens = tokenize.generate_tokens(io.StringIO(block.source).readline)
    lines = block.source.splitlines()
    for token in tokens:
        if token.type != tokenize.COMMENT:
            continue
        row = token.start[0]
        if re.search(r"\bprint\(", lines[row - 1][: token.start[1]]):
            found[block.line + row - 1] = token.string.lstrip("#").strip()
    return found


def output_matches(expected: str, actual: str) -> bool:
    pattern = ".*".join(re.escape(part.strip()) for part in expected.split("..."))
    return re.fullmatch(pattern, actual.strip(), flags=re.DOTALL) is not None


# -- rewriting: offline models and the local broker -------------------------------------------


class _OfflineModels(ast.NodeTransformer):
    """Replace the model string of every ``...Agent(...)`` call by the name ``OFFLINE_MODEL``."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if not name.endswith("Agent"):
            return node

        def offline(value: ast.expr) -> ast.expr:
            if (
                isinstance(value, ast.Constant)
                and isinstance(value.value, str)
                and ":" in value.value
            ):
                return ast.copy_location(ast.Name("OFFLINE_MODEL", ast.Load()), value)
            return value

        if node.args:
            node.args[0] = offline(node.args[0])
        for keyword in node.keywords:
            if keyword.arg == "model":
                keyword.value = offline(keyword.value)
        return node


def runnable_code(block: Block, broker_url: str | None) -> Any:
    """The block's code with offline models and, if given, the local broker's URL."""
    source = block.source
    if broker_url is not None:
        source = _BROKER_URL.sub(broker_url, source)
    tree = ast.parse(source, block.page)
    tree = ast.fix_missing_locations(_OfflineModels().visit(tree))
    ast.increment_lineno(tree, block.line - 1)
    return compile(tree, block.page, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


# -- what a block prints ----------------------------------------------------------------------


class Prints:
    """A ``print`` for a block's namespace: records what each of the block's lines prints."""

    def __init__(self, page: str) -> None:
        self.page = page
        self.by_line: dict[int, list[str]] = {}
        self._lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        buffer = io.StringIO()
        kwargs.pop("file", None)
        print(*args, file=buffer, **kwargs)
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename != self.page:
            frame = frame.f_back  # type: ignore[assignment]
        line = frame.f_lineno if frame is not None else 0
        with self._lock:
            self.by_line.setdefault(line, []).append(buffer.getvalue().rstrip("\n"))

    def check(self, block: Block) -> None:
        for line, expected in expected_outputs(block).items():
            printed = self.by_line.get(line)
            assert printed is not None, f"{block.page}:{line}: this print never ran"
            actual = ", ".join(printed)
            assert output_matches(expected, actual), (
                f"{block.page}:{line} printed {actual!r}; the page says {expected!r}"
            )


# -- the stand-ins ----------------------------------------------------------------------------


def standins() -> dict[str, Any]:
    """Fresh offline stand-ins for the names the pages' prose introduces."""
    from typing import Annotated, Any

    from pydantic import BaseModel
    from pydantic_ai import Agent as PydanticAIAgent
    from pydantic_ai.models.test import TestModel

    import murmur
    from murmur import AgentContext, AgentRuntime, FanOut, SSEEventEmitter, TaskSpec

    class Ticket(BaseModel):
        ticket: int
        text: str

    class Triage(BaseModel):
        priority: str
        team: str

    class Doc(BaseModel):
        title: str
        body: str

    class Record(BaseModel):
        id: int
        name: str

    class SubQuestion(BaseModel):
        text: str

    class Item(BaseModel):
        value: int

    class Plan(BaseModel):
        items: FanOut[list[Item]]

    class MyClientReset(Exception):
        """A client library's own "connection reset"."""

    class WarehouseEmitter:
        """An emitter whose ``emit`` would write to a data warehouse."""

        def __init__(self) -> None:
            self.events: list[murmur.RuntimeEvent] = []

        async def emit(self, event: murmur.RuntimeEvent) -> None:
            self.events.append(event)

    async def my_agent(question: str) -> str:
        return f"answer({question})"

    async def writer(topic: str) -> str:
        if "fail" in topic:
            raise ValueError(f"cannot write about {topic!r}")
        return f"draft({topic})"

    async def easy(ticket: str) -> str:
        return f"easy({ticket})"

    async def hard(ticket: str) -> str:
        return f"hard({ticket})"

    async def triage(ticket: str) -> str:
        return ticket

    def is_easy(output: str) -> bool:
        return len(output) < 20

    def is_hard(output: str) -> bool:
        return len(output) >= 20

    async def fan_out(n: int) -> Plan:
        return Plan(items=[Item(value=i) for i in range(n)])

    async def process(item: Item) -> int:
        return item.value

    async def reduce(values: list[int]) -> int:
        return sum(values)

    def lookup_customer(customer_id: str) -> str:
        """Look a customer up by id."""
        return f"customer {customer_id}: gold tier"

    def handle(event: murmur.RuntimeEvent) -> None:
        pass

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

    from myproject.agents import researcher, reviewer, summariser

    questions = ["why is the sky blue?", "what is a cancel scope?", "is 7 prime?"]
    return {
        "Any": Any,
        "Annotated": Annotated,
        "BaseModel": BaseModel,
        "AgentContext": AgentContext,
        "Ticket": Ticket,
        "Triage": Triage,
        "Doc": Doc,
        "Record": Record,
        "SubQuestion": SubQuestion,
        "Item": Item,
        "Plan": Plan,
        "MyClientReset": MyClientReset,
        "WarehouseEmitter": WarehouseEmitter,
        "my_agent": my_agent,
        "agent": my_agent,
        "researcher": researcher,
        "reviewer": reviewer,
        "summariser": summariser,
        "writer": writer,
        "easy": easy,
        "hard": hard,
        "triage": triage,
        "is_easy": is_easy,
        "is_hard": is_hard,
        "fan_out": fan_out,
        "process": process,
        "reduce": reduce,
        "lookup_customer": lookup_customer,
        "handle": handle,
        "question": questions[0],
        "questions": questions,
        "tasks": [TaskSpec(input=q) for q in questions],
        "TOKEN_LIMIT": 100_000,
        "my_pydantic_ai_agent": PydanticAIAgent(TestModel(), name="summariser"),
        "my_deps": None,
        "runtime": AgentRuntime(),
        "sse": SSEEventEmitter(),
        "tracer_provider": TracerProvider(),
        "meter_provider": MeterProvider(),
        "OFFLINE_MODEL": TestModel(),
    }


def namespace_for(block: Block, prints: Prints) -> dict[str, Any]:
    """The globals a block runs with."""
    import murmur

    # A module of its own, as a script has: pydantic resolves a model's annotations there.
    module = types.ModuleType(f"docs_block_{re.sub(r'[^A-Za-z0-9]', '_', block.id)}")
    sys.modules[module.__name__] = module
    namespace: dict[str, Any] = module.__dict__
    namespace["print"] = prints
    if not imports_anything(block):
        namespace.update({name: getattr(murmur, name) for name in murmur.__all__})
    namespace.update(standins())
    if imports_anything(block):
        # A block that imports must import what it uses from murmur (checked separately);
        # the stand-ins that share a murmur name are not given to it.
        for name in set(murmur.__all__) & set(namespace):
            namespace.pop(name)
    return namespace


def runtimes_in(namespace: dict[str, Any]) -> Iterator[Any]:
    from murmur import AgentRuntime

    for value in list(namespace.values()):
        if isinstance(value, AgentRuntime):
            yield value


async def close_all(namespace: dict[str, Any]) -> None:
    """Close the runtimes and emitters a notebook block left open (its bridge thread)."""
    from murmur import SSEEventEmitter

    sys.modules.pop(namespace["__name__"], None)
    for runtime in runtimes_in(namespace):
        await runtime.aclose()
    for value in list(namespace.values()):
        if isinstance(value, SSEEventEmitter):
            value.close()


def read_sse(url: str, deadline: float, failures: list[BaseException]) -> Callable[[], None]:
    """A thread body: connect to ``url`` (retrying while nothing listens) and read to the end."""
    import time

    import httpx

    def run() -> None:
        stop = time.monotonic() + deadline
        try:
            while True:
                try:
                    with (
                        httpx.Client(timeout=deadline) as client,
                        client.stream("GET", url) as response,
                    ):
                        assert response.status_code == 200, response.status_code
                        assert response.headers["content-type"].startswith("text/event-stream")
                        for _ in response.iter_lines():
                            pass
                    return
                except httpx.ConnectError:
                    if time.monotonic() > stop:
                        raise
                    time.sleep(0.05)  # the block's server is not listening yet: poll
        except Exception as exc:
            failures.append(exc)

    return run
