"""The provider registry: one `ProviderSpec` per provider, the only place a provider name is looked up.

A provider is a client class plus a few facts about it: its default base URL, the server gen starts for
it when none is given (the simulator, `vllm serve`), the rate-limit headers its replies carry, whether
its URLs are recorded in the manifest, whether it answers each request (`mode="request"`) or only
takes a batch and is polled later (`mode="batch"`, not run yet), and its batch API beside the chat one
(`batch`, a submit-and-poll client of gen.teachers.batch, used by `gen run --batch`). Adding a
provider is one client module plus one `register(ProviderSpec(...))`; config, prepare, the pipeline,
cluster and limits only look it up.

It lives beside the clients (shared/DESIGN.md: "clients only, each registered once as a provider spec")
and names everything by dotted path, imported when used: `import gen` stays fast, and moving the
simulator or the launcher to another package changes one constant here (SIM_MODULE, VLLM_MODULE).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

from gen.errors import ConfigError

if TYPE_CHECKING:
    from gen.config import PromptFile, VLLMSpec

# Where the servers gen launches live: the one place to change when they move.
SIM_MODULE = "gen.sim"
VLLM_MODULE = "gen.launchers.vllm"

# (remaining, reset) header pairs: a remaining count at 0 holds all dispatch until the reset (gen.limits).
OPENAI_RATE_HEADERS = (
    ("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
    ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
)
ANTHROPIC_RATE_HEADERS = (
    ("anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-reset"),
    ("anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-reset"),
)


@dataclass(slots=True)
class Launch:
    """What a launcher is given: the run's prompt file, model and [vllm] table (flags applied). It
    appends every server it starts to `servers` at once (the caller stops them, also on failure) and
    what a started server reports about itself (model path, revision) to `served`."""

    prompt: PromptFile
    model: str
    vllm: VLLMSpec
    servers: list[Any] = field(default_factory=list)
    served: list[dict[str, Any]] = field(default_factory=list)
    sim_answers: dict[str, str] | None = None  # the simulator's references ([sim] answer_from)


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """One provider. `client` is "module:Class", built as Class(base_url, model, api_key=..., schema=...,
    strict=..., max_connections=..., request_timeout_s=..., connect_timeout_s=..., max_reply_bytes=...)
    and speaking gen.teachers.base.Teacher. A provider with neither `default_base_url` nor `launcher`
    needs a base URL from the user."""

    name: str
    client: str
    default_base_url: str | None = None
    default_model: str | None = None
    # An async function (Launch) -> base URLs of the servers it started; `launch_always`: even when the
    # user gave base URLs (the simulator has none to give), else only when none was given.
    launcher: Callable[[Launch], Awaitable[list[str]]] | None = None
    launch_always: bool = False
    uses_gpus: bool = False  # a launched server needs GPUs (a Ray partition asks for them)
    # Checks provider tables of the prompt file (ConfigError) before anything runs.
    check_prompt: Callable[[PromptFile, str], Any] | None = None
    rate_limit_headers: tuple[tuple[str, str], ...] = ()
    price_key: str | None = None  # what gen/prices.toml is looked up by; None: the model id
    default_license: str | None = None  # None: the licence review decides from the model id
    records_base_urls: bool = False  # the manifest lists its (public, credential-free) base URLs
    mode: Literal["request", "batch"] = "request"
    # Its batch API beside the chat one (submit-and-poll, gen.teachers.batch.BatchClient): "module:Class",
    # built with the client's arguments; None when the provider has none (`gen run --batch` refuses it).
    batch: str | None = None

    def client_class(self) -> type[Any]:
        return load(self.client)

    def batch_class(self) -> type[Any]:
        assert self.batch is not None
        return load(self.batch)

    def launches(self, base_urls: tuple[str, ...] | list[str]) -> bool:
        """Whether gen starts the server(s) for this run itself."""
        return self.launcher is not None and (self.launch_always or not base_urls)


_REGISTRY: dict[str, ProviderSpec] = {}
_rate_headers: tuple[tuple[str, str], ...] = ()


def load(path: str) -> Any:
    """The object a "module:attr" path names, imported now."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def register(spec: ProviderSpec, *, replace: bool = False) -> ProviderSpec:
    """Add a provider. Registering a name twice is an error unless `replace`."""
    global _rate_headers
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"provider {spec.name!r} is registered already")
    _REGISTRY[spec.name] = spec
    _rate_headers = _union_rate_headers()
    return spec


def unregister(name: str) -> None:
    global _rate_headers
    _REGISTRY.pop(name, None)
    _rate_headers = _union_rate_headers()


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get(name: str, *, where: str | None = None) -> ProviderSpec:
    """The spec registered as `name`, or a ConfigError (naming `where`) that lists the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(where, f"unknown provider {name!r} (known: {', '.join(_REGISTRY)})") from None


def rate_limit_headers() -> tuple[tuple[str, str], ...]:
    """Every registered provider's (remaining, reset) pairs: a reply is read for all of them, as a
    proxy in front of one server may speak another provider's headers."""
    return _rate_headers


def _union_rate_headers() -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for spec in _REGISTRY.values():
        pairs += [p for p in spec.rate_limit_headers if p not in pairs]
    return tuple(pairs)


# --- the launchers ---


def sim_config(prompt: PromptFile, model: str, answers: dict[str, str] | None = None) -> Any:
    """The simulated teacher's settings from the prompt file's [sim] table (SimConfig)."""
    extra = {"answers": answers} if answers is not None else {}
    config = load(f"{SIM_MODULE}:SimConfig")
    known = {f.name for f in fields(config)}
    for key in prompt.spec.sim:
        if key not in known:  # a typo: TypeError's "__init__() got an unexpected keyword" reads as a bug
            raise ConfigError(prompt.path, f"[sim]: unknown key {key!r}")
    try:
        return config(**{"model": model, **prompt.spec.sim, **extra})
    except (TypeError, ValueError) as e:
        raise ConfigError(prompt.path, f"[sim]: {e}") from None


async def launch_sim(launch: Launch) -> list[str]:
    sim = load(f"{SIM_MODULE}:SimServer")(sim_config(launch.prompt, launch.model, launch.sim_answers))
    await sim.start()
    launch.servers.append(sim)
    return [sim.base_url]


async def launch_vllm(launch: Launch) -> list[str]:
    """Start `vllm serve` (once per replica, each on its own GPUs) and wait until every one is ready."""
    import asyncio  # here: gen.config imports this module, and `gen --help` should not pay for asyncio

    server_class, settings_class = load(f"{VLLM_MODULE}:VLLMServer"), load(f"{VLLM_MODULE}:VLLMSettings")
    spec = launch.vllm
    # GPUs this process may use: all of them, or those a scheduler (Ray, Slurm) assigned to it.
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else None
    servers = []
    for i in range(spec.replicas):
        gpus = range(i * spec.tensor_parallel_size * spec.data_parallel_size,
                     (i + 1) * spec.tensor_parallel_size * spec.data_parallel_size)  # fmt: skip
        names = [devices[g] if devices and g < len(devices) else str(g) for g in gpus]
        env = {"CUDA_VISIBLE_DEVICES": ",".join(names)} if spec.replicas > 1 else {}
        server = server_class(
            settings_class(
                model=launch.model,
                tensor_parallel_size=spec.tensor_parallel_size,
                data_parallel_size=spec.data_parallel_size,
                max_model_len=spec.max_model_len,
                gpu_memory_utilization=spec.gpu_memory_utilization,
                dtype=spec.dtype,
                max_num_seqs=spec.max_num_seqs,
                extra_args=list(spec.extra_args),
                startup_timeout_s=spec.startup_timeout_s,
                env=env,
            )
        )
        servers.append(server)
        launch.servers.append(server)
    # Replicas load in parallel: a cold start of a large model takes minutes each.
    urls = list(await asyncio.gather(*(s.start() for s in servers)))
    for s in servers:
        launch.served.append(await s.served_model())
    return urls


# --- the providers gen ships ---

register(
    ProviderSpec(
        name="openai",
        client="gen.teachers.openai:OpenAIChat",
        batch="gen.teachers.batch_openai:OpenAIBatches",
        rate_limit_headers=OPENAI_RATE_HEADERS,
        records_base_urls=True,
    )
)
register(
    ProviderSpec(
        name="anthropic",
        client="gen.teachers.anthropic:AnthropicMessages",
        batch="gen.teachers.batch_anthropic:AnthropicBatches",
        default_base_url="https://api.anthropic.com/v1",
        rate_limit_headers=ANTHROPIC_RATE_HEADERS,
        records_base_urls=True,
    )
)
register(
    ProviderSpec(
        name="vllm",
        client="gen.teachers.openai:OpenAIChat",
        launcher=launch_vllm,
        uses_gpus=True,
        rate_limit_headers=OPENAI_RATE_HEADERS,  # OpenAI-compatible, and so is a gateway in front of it
    )
)
register(
    ProviderSpec(
        name="sim",
        client="gen.teachers.openai:OpenAIChat",
        batch="gen.teachers.batch_openai:OpenAIBatches",  # it has OpenAI's batch endpoints too
        default_model="gen-sim-1",
        launcher=launch_sim,
        launch_always=True,
        check_prompt=sim_config,  # a typo in [sim] is bad input too
        rate_limit_headers=OPENAI_RATE_HEADERS + ANTHROPIC_RATE_HEADERS,  # it can speak either
    )
)
