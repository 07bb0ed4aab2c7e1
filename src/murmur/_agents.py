"""Agents: murmur.Agent specs, wrapped pydantic-ai agents and plain async functions.

Whatever the user hands to ``run``/``gather`` is resolved once per call into an
``AgentImpl``: a stable name, an optional input validator, and ``invoke(value, ctx)``.
"""

from __future__ import annotations

import contextlib
import dis
import functools
import importlib.util
import inspect
import sys
import threading
import types
import typing
import weakref
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias

import pydantic_core
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
)

from ._lazy import loaded_class
from ._types import Usage
from .errors import (
    BudgetExceededError,
    InputValidationError,
    InvalidTypeError,
    InvalidValueError,
    MissingDependencyError,
)

# pydantic-ai (and all it pulls in) is imported only once a pydantic-ai agent is built or
# run, never by ``import murmur``: type checkers see its names, the code imports them late.
if TYPE_CHECKING:
    from pydantic_ai import Agent as _PydanticAIAgent
    from pydantic_ai.models import Model
    from pydantic_ai.usage import UsageLimits

    from ._context import AgentContext

__all__ = [
    "Agent",
    "AgentImpl",
    "AgentLike",
    "FunctionAgent",
    "PydanticAIAgent",
    "from_pydantic_ai",
    "register",
    "registered",
    "resolve_agent",
]

#: Anything ``run``/``gather`` accept as an agent.
AgentLike = Any


class AgentImpl(ABC):
    """The one shape every agent is dispatched through."""

    #: Stable name: used in results, events, and to find the agent on a worker.
    name: str
    #: True when the agent must run on an asyncio loop (pydantic-ai); under Trio the
    #: runtime then dispatches it through its asyncio bridge.
    asyncio_only: bool = False
    #: False only when a call provably never suspends (its code has no ``await``): no
    #: cancel scope can fire inside such a call, so a per-attempt timeout needs none.
    can_suspend: bool = True
    _input_adapter: TypeAdapter[Any] | None = None
    _input_class: type | None = None

    #: True when ``input_problem`` can find a problem with an input before the task runs.
    checks_input: bool = False

    def input_problem(self, value: Any) -> str | None:
        """What makes ``value`` impossible to hand to this agent, found without running it."""
        return None

    def declared_output_type(self) -> Any:
        """The type the agent says it returns, if it says (``None`` otherwise)."""
        return None

    def rebuild_output(self, value: Any) -> Any:
        """An output parsed back from JSON (it crossed a transport) as the declared output
        type, when JSON does not keep that type (a pydantic model, a dataclass, ...)."""
        adapter = self.__dict__.get("_output_adapter", _UNSET)
        if adapter is _UNSET:
            adapter = self.__dict__["_output_adapter"] = _output_adapter(
                self.declared_output_type()
            )
        if adapter is None:
            return value
        try:
            return adapter.validate_python(value)
        except ValidationError:
            return value  # not what it declared: hand over what came, as is

    def prepare_input(self, value: Any) -> Any:
        """Validate ``value`` against the agent's input type, if it has one."""
        adapter = self._input_adapter
        if adapter is None or type(value) is self._input_class:
            return value
        try:
            return adapter.validate_python(value)
        except ValidationError as exc:
            raise InputValidationError(
                self.name, [dict(e) for e in exc.errors(include_url=False)]
            ) from exc

    @abstractmethod
    async def invoke(self, value: Any, ctx: AgentContext) -> Any:
        """Run the agent once on an already validated input."""

    def _set_input_type(self, input_type: Any) -> None:
        self._input_adapter, self._input_class = _input_validator(input_type)

    def __murmur_agent__(self) -> AgentImpl:
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def _is_pydantic_ai_agent(obj: Any) -> bool:
    agent_class = loaded_class("pydantic_ai.agent", "Agent")
    return agent_class is not None and isinstance(obj, agent_class)


def render_prompt(value: Any) -> str:
    """A ``str`` goes to the model verbatim; anything else is rendered as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return pydantic_core.to_json(value).decode()


class PydanticAIAgent(AgentImpl):
    """A ``pydantic_ai.Agent`` dispatched by Murmur; see ``from_pydantic_ai``."""

    asyncio_only = True

    def __init__(
        self,
        agent: _PydanticAIAgent[Any, Any],
        *,
        name: str | None = None,
        deps: Any = None,
        input_type: Any = None,
        pass_context_as_deps: bool = False,
    ) -> None:
        if not _is_pydantic_ai_agent(agent):
            raise InvalidTypeError(
                f"from_pydantic_ai() expects a pydantic_ai.Agent, got {type(agent).__name__}"
            )
        resolved = name if name is not None else (agent.name or "pydantic_ai_agent")
        self.name = _check_name(resolved, "name")
        self.agent = agent
        self._deps = deps
        self._context_as_deps = pass_context_as_deps
        self._set_input_type(input_type)

    checks_input = True

    def input_problem(self, value: Any) -> str | None:
        try:
            prepared = self.prepare_input(value)
        except InputValidationError:
            return None  # reported in the task's result, as for any agent
        try:
            render_prompt(prepared)
        except (TypeError, ValueError) as exc:
            return (
                f"a {type(prepared).__name__} cannot be sent to the model as JSON ({exc}); "
                "pass a str, JSON-like values or a pydantic model"
            )
        return None

    def declared_output_type(self) -> Any:
        output_type = getattr(self.agent, "output_type", None)
        return output_type if isinstance(output_type, type) else None

    async def invoke(self, value: Any, ctx: AgentContext) -> Any:
        from pydantic_ai.exceptions import UsageLimitExceeded
        from pydantic_ai.usage import RunUsage, UsageLimits

        from .middleware.cost_tracking import run_growth

        # pydantic-ai adds to the RunUsage it is given as it goes, so even a run that fails
        # part-way reports what it spent.
        usage = RunUsage()
        cap = ctx.token_cap
        limits = None
        if cap is not None:
            left = cap - ctx.usage.total_tokens
            if left <= 0:
                raise BudgetExceededError(
                    f"agent {self.name!r} has used the {cap} tokens reserved for its task"
                )
            grow = run_growth(ctx)
            if grow is None:  # a fixed reservation: a hard cap, checked by pydantic-ai
                limits = UsageLimits(total_tokens_limit=left)
            else:
                limits = _growing_usage_limits()(left, grow)
            ctx._capped_run = (limits, usage)
        try:
            result = await self.agent.run(
                render_prompt(value),
                deps=ctx if self._context_as_deps else self._deps,
                usage_limits=limits,
                usage=usage,
            )
        except UsageLimitExceeded as exc:
            if limits is not None and "total_tokens_limit" in str(exc):
                reserved = ctx.token_cap  # grown, if the run grew
                raise BudgetExceededError(
                    f"agent {self.name!r} was cut off at the {reserved} tokens reserved for "
                    "its task"
                ) from exc
            raise
        finally:
            ctx._capped_run = None
            ctx.report_usage(Usage.from_pydantic_ai(usage))
        return result.output


@functools.cache
def _growing_usage_limits() -> Callable[[int, Callable[[Any, int], None]], UsageLimits]:
    """``UsageLimits(total_tokens_limit=...)`` for an adaptive reservation, which grows: a
    run is stopped before a request it cannot pay for, never after an answer already paid.

    Past the limit, the limit is first raised by ``grow`` (the budget, if it grants more);
    if that is not enough, the response that went over may still finish the run, and the
    run is cut off (pydantic-ai raises) at its next check, which comes before its next
    request at the latest. So a run ends at most one response past its reservation, and an
    answer that crossed it is kept. The class is built on first use, so that ``import
    murmur`` does not import pydantic-ai.
    """
    from pydantic_ai.usage import RunUsage, UsageLimits

    class GrowingUsageLimits(UsageLimits):
        # pydantic-ai reads the limit anew at each check, on the object it was given:
        # `check_tokens` after each model response (in older versions the check itself,
        # in newer ones via `_check_token_limits`, also called while streaming), and
        # `check_before_request` before each request.
        def __init__(self, total_tokens_limit: int, grow: Callable[[Any, int], None]) -> None:
            super().__init__(total_tokens_limit=total_tokens_limit)
            self.grow = grow
            self.owing = False  # past the limit since a response: no further request

        def _covered(self, spent: int) -> bool:
            limit = self.total_tokens_limit
            if limit is not None and spent > limit:
                self.grow(self, spent)
                limit = self.total_tokens_limit
            if limit is not None and spent > limit:
                return False
            self.owing = False
            return True

        def _may_check(self, spent: int) -> bool:
            """After a response: whether pydantic-ai may check (and so raise) now."""
            if self._covered(spent) or self.owing:
                return True
            self.owing = True  # let this response finish the run, if it is the answer
            return False

        def check_tokens(self, usage: RunUsage) -> None:
            if self._may_check(usage.total_tokens):
                super().check_tokens(usage)

        def _check_token_limits(self, usage: RunUsage) -> None:
            if self._may_check(usage.total_tokens):
                super()._check_token_limits(usage)

        def check_before_request(self, usage: RunUsage) -> None:
            self._covered(usage.total_tokens)
            super().check_before_request(usage)

    return GrowingUsageLimits


#: Providers of pydantic-ai model strings, by what they need: the ``murmur-agents`` extra
#: that installs their client package, that package's name, and a module it provides (to
#: tell whether it is installed without importing it). The openai extra serves every
#: provider that speaks through the ``openai`` client.
_EXTRA_PROVIDERS: dict[tuple[str, str, str], tuple[str, ...]] = {
    ("openai", "openai", "openai"): (
        "openai",
        "openai-chat",
        "openai-responses",
        "openai-decisions",
        "openai-codex",
        "openai-chatgpt",
        "azure",
        "azure-responses",
        "alibaba",
        "cerebras",
        "crusoe",
        "deepseek",
        "fireworks",
        "github",
        "github-copilot",
        "heroku",
        "litellm",
        "meta",
        "moonshotai",
        "nebius",
        "ollama",
        "openrouter",
        "ovhcloud",
        "sambanova",
        "snowflake",
        "together",
        "vercel",
        "vllm",
        "zai",
    ),
    ("anthropic", "anthropic", "anthropic"): ("anthropic",),
    ("google", "google-genai", "google.genai"): ("google", "google-decisions", "google-cloud"),
    ("groq", "groq", "groq"): ("groq",),
    ("mistral", "mistralai", "mistralai"): ("mistral",),
    ("cohere", "cohere", "cohere"): ("cohere",),
    ("bedrock", "boto3", "boto3"): ("bedrock",),
    ("huggingface", "huggingface-hub", "huggingface_hub"): ("huggingface",),
    ("xai", "xai-sdk", "xai_sdk"): ("xai",),
}
PROVIDER_EXTRAS: dict[str, tuple[str, str, str]] = {
    provider: needs for needs, providers in _EXTRA_PROVIDERS.items() for provider in providers
}


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, found without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # its parent package is missing
        return False
    except ValueError:  # already imported, without a spec
        return True


def _missing_provider_error(agent: str, model: str, cause: str | None) -> MissingDependencyError:
    """The error for a model string whose provider's client package is not installed."""
    found = PROVIDER_EXTRAS.get(model.partition(":")[0])
    if found is None:
        return MissingDependencyError(
            f"murmur.Agent {agent!r}: model {model!r} needs a package that is not installed: "
            f"{cause}"
        )
    extra, package, module = found
    return MissingDependencyError(
        f"murmur.Agent {agent!r}: model {model!r} needs the {package!r} package, which is "
        f"not installed; install it with: pip install 'murmur-agents[{extra}]'",
        name=module,
    )


def _check_model(value: Any) -> Any:
    """``Agent.model`` is a model string or a pydantic-ai ``Model`` instance, nothing else."""
    if isinstance(value, str):
        if not value.strip():
            raise InvalidValueError(
                "model must be a non-empty model string such as 'openai:gpt-4o'"
            )
        return value
    model_class = loaded_class("pydantic_ai.models", "Model")
    if model_class is not None and isinstance(value, model_class):
        return value
    raise InvalidValueError(
        "model must be a pydantic-ai model string such as 'openai:gpt-4o' or a "
        "pydantic_ai.models.Model instance such as TestModel(); "
        f"got {type(value).__name__}: {value!r}"
    )


if TYPE_CHECKING:
    ModelSpec: TypeAlias = str | Model
else:
    # Checked by hand, so that validating an Agent imports no pydantic-ai.
    ModelSpec = Annotated[Any, BeforeValidator(_check_model)]


class Agent(BaseModel):
    """A named agent spec over pydantic-ai.

    Attributes:
        name: Stable name, used in results and events and to find the agent on workers.
        model: A pydantic-ai model string (``"openai:gpt-4o"``) or ``Model`` instance
            (``TestModel()``, ``FunctionModel(fn)``).
        instructions: System instructions for the model.
        output_type: The type of the agent's output (default ``str``).
        input_type: If set, each task's input is validated against it before dispatch.
        tools: pydantic-ai tools (functions or ``Tool`` objects). A tool that takes
            ``RunContext[AgentContext]`` reaches Murmur's context as ``ctx.deps``.
        model_settings: pydantic-ai ``ModelSettings`` for every run.

    Raises:
        pydantic.ValidationError: a field is invalid (it is named in the error).
        ModuleNotFoundError: the model string's provider needs a client package that is
            not installed; the error names the ``murmur-agents`` extra that installs it.

    The pydantic-ai agent is built once, on first use, and reused by every task.
    Agents compare and hash by identity, so they can key an ``AgentGroup`` topology.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str = Field(min_length=1)
    model: ModelSpec
    instructions: str | None = None
    output_type: Any = str
    input_type: Any = None
    tools: tuple[Any, ...] = ()
    model_settings: dict[str, Any] | None = None

    _impl: PydanticAIAgent | None = PrivateAttr(default=None)
    _build_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def model_post_init(self, context: Any, /) -> None:
        # Known without an API key and without importing pydantic-ai: fail here, not in
        # every task.
        if isinstance(self.model, str):
            found = PROVIDER_EXTRAS.get(self.model.partition(":")[0])
            if found is not None and not _installed(found[2]):
                raise _missing_provider_error(self.name, self.model, None)

    def __murmur_agent__(self) -> AgentImpl:
        impl = self._impl
        if impl is None:
            with self._build_lock:
                impl = self._impl
                if impl is None:
                    impl = self._impl = self._build()
        return impl

    def _build(self) -> PydanticAIAgent:
        from pydantic_ai import Agent as PydanticAIAgentClass

        from ._context import AgentContext

        self._check_provider_importable()
        agent: _PydanticAIAgent[Any, Any] = PydanticAIAgentClass(
            self.model,
            name=self.name,
            instructions=self.instructions,
            output_type=self.output_type,
            tools=self.tools,
            model_settings=typing.cast(Any, self.model_settings),
            deps_type=AgentContext,
            defer_model_check=True,
        )
        return PydanticAIAgent(
            agent, name=self.name, input_type=self.input_type, pass_context_as_deps=True
        )

    def _check_provider_importable(self) -> None:
        """Import the model string's provider now: a missing package fails the build once,
        with the extra to install, instead of every task deep inside pydantic-ai."""
        if not isinstance(self.model, str) or ":" not in self.model:
            return
        from pydantic_ai.providers import infer_provider_class

        try:
            infer_provider_class(self.model.partition(":")[0])
        except ImportError as exc:
            raise _missing_provider_error(self.name, self.model, str(exc)) from exc
        except Exception:
            return  # an unknown provider: pydantic-ai reports it on each run, as before

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return f"Agent(name={self.name!r}, model={self.model!r})"


def from_pydantic_ai(
    agent: _PydanticAIAgent[Any, Any],
    *,
    name: str | None = None,
    deps: Any = None,
    input_type: Any = None,
) -> PydanticAIAgent:
    """Wrap an existing ``pydantic_ai.Agent`` so Murmur can run it.

    Args:
        agent: The pydantic-ai agent; it is reused as is, never rebuilt.
        name: Stable name; defaults to ``agent.name``, else ``"pydantic_ai_agent"``.
        deps: Passed as ``deps`` to every run.
        input_type: If set, each task's input is validated against it before dispatch.
    """
    return PydanticAIAgent(agent, name=name, deps=deps, input_type=input_type)


class FunctionAgent(AgentImpl):
    """A plain ``async def f(input)`` or ``async def f(input, ctx)`` used as an agent.

    The first parameter's annotation, when it names a type, is the agent's input type:
    inputs are validated (and coerced, e.g. a dict into a pydantic model) before the call.
    ``model`` names the model string the function calls (``"openai:gpt-4o"``), if any: the
    ``RateLimit``s of that model and its provider then apply to it.
    """

    def __init__(
        self,
        fn: Callable[..., Awaitable[Any]],
        *,
        name: str | None = None,
        input_type: Any = None,
        model: str | None = None,
    ) -> None:
        if not _is_async_callable(fn):
            raise InvalidTypeError(
                "a function agent must be an async function, `async def f(input)` or "
                f"`async def f(input, ctx)`; got {fn!r}"
            )
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise InvalidValueError(
                f"model must be a non-empty model string or None, got {model!r}"
            )
        self.fn = fn
        self.model = model
        default_name, self.takes_context, self.can_suspend, adapter, input_class = _describe(fn)
        self.name = _check_name(name if name is not None else default_name, "name")
        if input_type is not None:
            adapter, input_class = _input_validator(input_type)
        self._input_adapter, self._input_class = adapter, input_class

    def declared_output_type(self) -> Any:
        try:
            return typing.get_type_hints(self.fn).get("return")
        except Exception:  # unresolvable annotations, or not a plain function
            return None

    async def invoke(self, value: Any, ctx: AgentContext) -> Any:
        if self.takes_context:
            return await self.fn(value, ctx)
        return await self.fn(value)


_Description = tuple[str, bool, bool, TypeAdapter[Any] | None, type | None]
# What inspecting a function found (name, takes ctx, input validator), keyed weakly by the
# function. The values hold no reference to the function, so both can be collected.
_descriptions: weakref.WeakKeyDictionary[Any, _Description] = weakref.WeakKeyDictionary()


def _describe(fn: Any) -> _Description:
    """Inspect a function agent once: its default name, whether it takes ctx, its input type."""
    try:
        found = _descriptions.get(fn)
    except TypeError:  # unhashable: inspect every time
        found = None
    if found is None:
        first, takes_ctx = _inspect_parameters(fn)
        found = (_callable_name(fn), takes_ctx, may_suspend(fn), *_input_validator(first))
        with contextlib.suppress(TypeError):  # not weak-referenceable: just don't cache
            _descriptions[fn] = found
    return found


_UNSET: Any = object()
#: Types JSON gives back as they were: no rebuilding needed.
_JSON_NATIVE = frozenset({str, int, float, bool, type(None), object})


def _output_adapter(output_type: Any) -> TypeAdapter[Any] | None:
    """A validator rebuilding ``output_type`` from JSON values, or None when not needed."""
    if output_type is None or output_type is Any or output_type in _JSON_NATIVE:
        return None
    try:
        return TypeAdapter(output_type)
    except Exception:  # not a type pydantic can build (a bare TypeVar, a Protocol)
        return None


def _input_validator(input_type: Any) -> tuple[TypeAdapter[Any] | None, type | None]:
    """A validator for ``input_type`` (none for no type, ``Any`` or ``object``)."""
    if input_type is None or input_type is Any or input_type is object:
        return None, None
    return TypeAdapter(input_type), input_type if isinstance(input_type, type) else None


#: Agents declared with ``register``, in order, with the module that declared each.
registered: list[tuple[Any, str]] = []


def register(agent: Any) -> Any:
    """Declare an agent a worker of this app serves, beside the app's module-level agents.

    Use as ``register(agent)`` or as a decorator on an ``async def``; returns the agent.
    It is served under its own name (``murmur.Agent(name=...)``,
    ``from_pydantic_ai(..., name=...)``, ``FunctionAgent(fn, name=...)``, a function's name).

    Raises:
        InvalidTypeError: ``agent`` is not something ``run`` accepts.
    """
    resolve_agent(agent)  # refuses a non-agent here, at import, not in the worker
    caller = sys._getframe(1).f_globals.get("__name__", "")
    registered.append((agent, str(caller)))
    return agent


def resolve_agent(agent: AgentLike) -> AgentImpl:
    """Turn anything ``run``/``gather`` accept into an ``AgentImpl``, or raise ``TypeError``."""
    hook = getattr(agent, "__murmur_agent__", None)
    if hook is not None and not isinstance(agent, type):
        impl: AgentImpl = hook()
        return impl
    if _is_pydantic_ai_agent(agent):
        return PydanticAIAgent(agent)
    if callable(agent) and _is_async_callable(agent):
        return FunctionAgent(agent)
    raise InvalidTypeError(
        "agent must be a murmur.Agent, a pydantic_ai.Agent, the result of "
        "from_pydantic_ai(), or an async function `async def f(input)` / "
        f"`async def f(input, ctx)`; got {type(agent).__name__}: {agent!r}"
    )


def _is_async_callable(obj: Any) -> bool:
    while isinstance(obj, partial):
        obj = obj.func
    if inspect.iscoroutinefunction(obj):
        return True
    call = getattr(obj, "__call__", None)  # noqa: B004 - an object with an async __call__
    return call is not None and not inspect.isfunction(obj) and inspect.iscoroutinefunction(call)


_YIELD_VALUE = dis.opmap["YIELD_VALUE"]


def may_suspend(fn: Any) -> bool:
    """False only if calling ``fn`` returns a coroutine that completes without suspending.

    A coroutine's frame can only suspend by executing ``YIELD_VALUE`` (every ``await``,
    ``async with`` and ``async for`` compiles to one), so a plain ``async def`` whose code
    has none runs to completion in one step: no checkpoint, nothing to cancel. Anything that
    cannot be inspected exactly (callable objects, wrappers in C) may suspend.
    """
    while isinstance(fn, partial):
        fn = fn.func
    if isinstance(fn, types.MethodType):
        fn = fn.__func__
    if not isinstance(fn, types.FunctionType) or not fn.__code__.co_flags & inspect.CO_COROUTINE:
        return True  # not a native coroutine function (e.g. marked, returning an awaitable)
    return any(op.opcode == _YIELD_VALUE for op in dis.get_instructions(fn.__code__))


def _callable_name(fn: Any) -> str:
    while isinstance(fn, partial):
        fn = fn.func
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return str(name)


def _check_name(name: Any, field: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidValueError(f"agent {field} must be a non-empty string, got {name!r}")
    return name


def _inspect_parameters(fn: Any) -> tuple[Any, bool]:
    """The first parameter's annotation (or None) and whether a second (ctx) is taken."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None, False
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    varargs = any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values())
    if not positional and not varargs:
        raise InvalidTypeError(
            f"a function agent takes the task input as its first parameter; {fn!r} takes none"
        )
    required = [p for p in positional if p.default is p.empty]
    if len(required) > 2:
        raise InvalidTypeError(
            f"a function agent takes (input) or (input, ctx); {fn!r} requires {len(required)} "
            "positional arguments"
        )
    takes_ctx = len(positional) >= 2 and (len(required) == 2 or positional[1].name == "ctx")
    annotation = positional[0].annotation if positional else inspect.Parameter.empty
    if annotation is inspect.Parameter.empty:
        return None, takes_ctx
    if isinstance(annotation, str):
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # unresolvable forward reference: skip validation, don't guess
            return None, takes_ctx
        annotation = hints.get(positional[0].name)
    return annotation, takes_ctx
