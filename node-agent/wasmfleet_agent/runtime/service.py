"""What the agent runs: an HTTP service (a fresh instance per request) or a job.

`HttpModule.execute` is the blocking body of one request: CGI variables and the body in, a
response out, every failure mapped to a status:

==========================  ======  ==============================================
what happened               status  client sees
==========================  ======  ==============================================
deadline passed             504     ``module timed out``
output over the limit       502     ``module response too large``
invalid CGI output          502     ``module wrote an invalid response``
memory limit reached        500     ``module ran out of memory``
trap, stack, fuel, exit≠0   500     ``module failed``
==========================  ======  ==============================================

The detail (trap message, exit code) goes to the agent's log under an error id that the client
also gets, never to the client: it may describe the module's internals.

`run_job` runs a job once; `JobRunner` repeats it with exponential backoff until it succeeds
or its retries are spent.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from wasmfleet_agent.runtime import cgi, wasi_http
from wasmfleet_agent.runtime.component import PROXY_WORLD
from wasmfleet_agent.runtime.engine import CompiledModule, ModuleSlot
from wasmfleet_agent.runtime.errors import ModuleLoadError, SandboxConfigError
from wasmfleet_agent.runtime.link import BodyLink
from wasmfleet_agent.runtime.sandbox import (
    Failure,
    HandleResult,
    RunLimits,
    RunResult,
    SandboxSpec,
    handle_http,
    instance_bytes,
    run,
)
from wasmfleet_common.backoff import Backoff

__all__ = [
    "HttpModule",
    "HttpOutcome",
    "IncomingRequest",
    "JobAttempt",
    "JobRunner",
    "check_fits",
    "run_job",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IncomingRequest:
    """What the module is told about a request (the WAGI/CGI inputs)."""

    method: str
    path: str
    """Percent-decoded."""
    query: str
    """As sent."""
    headers: tuple[tuple[str, str], ...]
    body: bytes
    remote_addr: str
    server_name: str
    server_port: int
    scheme: str = "http"
    request_uri: str | None = None
    """The origin-form target as sent (None: ``path?query``)."""
    protocol: str = "HTTP/1.1"
    link: BodyLink | None = None
    """The client's connection, through which a ``wasi:http`` run's bodies stream (None: a
    CGI run, or one whose bodies are held whole)."""
    more_body: bool = False
    """``body`` is the start of the body: the rest comes through ``link``."""


@dataclass(frozen=True)
class HttpOutcome:
    """What to answer; ``error`` set means the module failed and ``status`` is a 5xx."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    error: str | None = None
    instantiate_seconds: float = 0.0
    outbound: tuple[str, ...] = ()
    """The outcome of each outgoing request the guest made (``sent``, ``refused``,
    ``failed``), for the agent's metrics."""
    cpu_seconds: float = 0.0
    """CPU time the run took on its thread, instance included (0 when nothing ran)."""
    waited: bool = False
    """The guest slept or waited in a host call."""


_CLIENT_TEXT = {
    "deadline": (504, "module timed out"),
    "output": (502, "module response too large"),
    "memory": (500, "module ran out of memory"),
}
_MAX_STDERR_LOGGED = 4096


@dataclass
class HttpModule:
    """One HTTP service's module with its sandbox and limits; ``execute`` is thread-safe."""

    name: str
    compiled: CompiledModule | ModuleSlot
    spec: SandboxSpec
    limits: RunLimits
    server_software: str = "wasmfleet"

    def __post_init__(self) -> None:
        kept = tuple((k, v) for k, v in self.spec.env if not cgi.reserved(k))
        dropped = sorted({k for k, _ in self.spec.env} - {k for k, _ in kept})
        if dropped:
            _log.warning(
                "ignoring environment variables the agent sets per request",
                extra={"service": self.name, "variables": dropped},
            )
            self.spec = replace(self.spec, env=kept)
        self.spec.check()

    @property
    def cgi(self) -> bool:
        """Whether the module reads the request as CGI variables (a WAGI module or command
        component), which hold the path percent-decoded; a ``wasi:http/proxy`` component
        gets the target as sent."""
        return not self.compiled.world.startswith(PROXY_WORLD)

    @property
    def repeatable(self) -> bool:
        """A run leaves nothing behind but its answer: no writable directory, no outbound
        requests. Such a run, stopped early, can start again with nobody the wiser."""
        return not self.spec.outbound and not any(p.writable for p in self.spec.preopens)

    @property
    def ready(self) -> bool:
        """The machine code is in memory: a run starts without reading the disk."""
        return self.compiled.loaded if isinstance(self.compiled, ModuleSlot) else True

    @property
    def instance_bytes(self) -> int:
        """The most one request's instance may take (linear memories and tables)."""
        return instance_bytes(self.spec.memory_limit, self.compiled.shape)

    def execute(self, request: IncomingRequest, spent: float = 0.0) -> HttpOutcome:
        """Runs one request to completion (blocking) and says what to answer; ``spent``:
        seconds of its deadline an earlier `attempt` took."""
        outcome = self._execute(request, None, spent)
        assert outcome is not None  # only a budget stops a run without an outcome
        return outcome

    def attempt(self, request: IncomingRequest, budget: float) -> HttpOutcome | None:
        """A try of `execute` that must not hold its thread: a run that spends ``budget``
        seconds of CPU, or would sleep or wait in a host call, is stopped and None returned,
        and nothing of it is logged; the caller then runs the request again. Only for a
        `repeatable` module."""
        return self._execute(request, budget, 0.0)

    def _execute(
        self, request: IncomingRequest, budget: float | None, spent: float
    ) -> HttpOutcome | None:
        limits = self.limits
        if spent and limits.deadline_seconds is not None:
            limits = replace(limits, deadline_seconds=max(0.0, limits.deadline_seconds - spent))
        if budget is not None:
            limits = _with_budget(limits, budget)
        try:
            compiled = self.compiled.get()
        except ModuleLoadError as error:  # unloaded while idle, and its file is gone
            return HttpOutcome(500, error=f"module failed: {error}")
        if compiled.component is not None and compiled.component.world_kind == "proxy":
            return self._handle(compiled, request, limits)
        variables = cgi.request_variables(
            method=request.method,
            path=request.path,
            query=request.query,
            headers=request.headers,
            body_length=len(request.body),
            remote_addr=request.remote_addr,
            server_name=request.server_name,
            server_port=request.server_port,
            server_software=self.server_software,
            scheme=request.scheme,
            protocol=request.protocol,
            request_uri=request.request_uri,
        )
        result = run(compiled, self.spec, stdin=request.body, extra_env=variables, limits=limits)
        if result.failure is not None and result.failure.kind == "budget":
            return None
        if result.stderr:
            _log.info(
                "module stderr",
                extra={
                    "service": self.name,
                    "stderr": result.stderr[:_MAX_STDERR_LOGGED].decode("utf-8", "replace"),
                },
            )
        return replace(_outcome(result), cpu_seconds=result.cpu_seconds, waited=result.waited)

    def _handle(
        self, compiled: CompiledModule, request: IncomingRequest, limits: RunLimits
    ) -> HttpOutcome | None:
        """One request to a ``wasi:http/proxy`` component."""
        state = wasi_http.Exchange(
            _http_request(request),
            max_output=limits.max_output,
            env=self.spec.env,
            args=self.spec.args,
            outbound=self.spec.outbound_policy,
            link=request.link,
        )
        result = handle_http(
            compiled,
            self.spec,
            state,
            deadline_seconds=limits.deadline_seconds,
            cpu_budget=limits.cpu_budget,
        )
        if result.failure is not None and result.failure.kind == "budget":
            return None
        if state.log:
            _log.info(
                "module stderr",
                extra={
                    "service": self.name,
                    "stderr": bytes(state.log[:_MAX_STDERR_LOGGED]).decode("utf-8", "replace"),
                },
            )
        for outcome, detail in state.outgoing:
            if outcome != "sent":
                _log.warning(
                    f"outbound request {outcome}",
                    extra={"service": self.name, "reason": detail},
                )
        answer = _proxy_outcome(result, state.response)
        return replace(
            answer,
            outbound=tuple(outcome for outcome, _ in state.outgoing),
            cpu_seconds=result.cpu_seconds,
            waited=result.waited,
        )


@functools.lru_cache(maxsize=256)
def _with_budget(limits: RunLimits, budget: float) -> RunLimits:
    """``limits`` for a try with a CPU budget (made once, not on every inline request)."""
    return replace(limits, cpu_budget=budget)


def check_fits(compiled: CompiledModule, spec: SandboxSpec, *, job: bool) -> None:
    """Raises `SandboxConfigError` when ``compiled`` cannot run as asked: a ``wasi:http/proxy``
    component answers requests (it is no job) and is given no directories."""
    if compiled.component is None or compiled.component.world_kind != "proxy":
        return
    if job:
        raise SandboxConfigError(
            f"the module is a {compiled.world} component, which answers HTTP requests: a job "
            "runs a wasi:cli/command component or a WASI preview 1 module"
        )
    if spec.preopens:
        raise SandboxConfigError(
            f"the module is a {compiled.world} component, and this agent gives those no "
            "directories yet: remove the volumes, or build it as a wasi:cli/command component"
        )


def _http_request(request: IncomingRequest) -> wasi_http.IncomingHttp:
    target = request.request_uri
    if target is None:
        target = urllib.parse.quote(request.path, safe="/%!$&'()*+,;=:@~-._")
        if request.query:
            target += "?" + request.query
    authority = next((v for k, v in request.headers if k.lower() == "host"), None)
    if authority is None:
        authority = f"{request.server_name}:{request.server_port}"
    return wasi_http.IncomingHttp(
        method=request.method,
        path_with_query=target,
        scheme=request.scheme,
        authority=authority,
        # Host is the authority (as native wasmtime serve hands it over)
        headers=tuple(
            (name, value.encode("utf-8", "surrogateescape"))
            for name, value in request.headers
            if name.lower() != "host"
        ),
        body=request.body,
        rest=request.link if request.more_body else None,
    )


def _failed(failure: Failure, timing: float) -> HttpOutcome:
    """A run the agent stopped or that trapped, as the client's 5xx."""
    status, text = _CLIENT_TEXT.get(failure.kind, (500, "module failed"))
    return HttpOutcome(status, error=f"{text}: {failure.detail}", instantiate_seconds=timing)


def _proxy_outcome(result: HandleResult, response: wasi_http.GuestResponse | None) -> HttpOutcome:
    timing = result.instantiate_seconds
    if result.failure is not None:
        return _failed(result.failure, timing)
    problem: tuple[int, str] | None = None
    if response is None:
        problem = 500, "module failed: the component returned without setting a response"
    elif response.error is not None:
        problem = 500, f"module failed: the component answered with error {response.error}"
    elif not response.finished:
        problem = 502, "module wrote an invalid response: its body was not finished"
    else:
        declared = wasi_http.declared_length(response.headers)
        if declared is not None and declared != response.length:
            problem = (
                502,
                (
                    "module wrote an invalid response: content-length "
                    f"{_content_length(response.headers)!r} but {response.length} bytes of body"
                ),
            )
    if problem is not None:
        return HttpOutcome(problem[0], error=problem[1], instantiate_seconds=timing)
    assert response is not None
    return HttpOutcome(
        response.status,
        wasi_http.header_pairs(response.headers),
        bytes(response.body),
        instantiate_seconds=timing,
    )


def _content_length(fields: list[tuple[str, bytes]]) -> str:
    return next(v for k, v in fields if k.lower() == "content-length").decode("latin-1")


def _outcome(result: RunResult) -> HttpOutcome:
    timing = result.instantiate_seconds
    if result.failure is not None:
        return _failed(result.failure, timing)
    if result.exit_code:
        return HttpOutcome(
            500,
            error=f"module failed: exited with code {result.exit_code}",
            instantiate_seconds=timing,
        )
    try:
        response = cgi.parse_output(result.stdout)
    except cgi.CgiError as error:
        return HttpOutcome(
            502, error=f"module wrote an invalid response: {error}", instantiate_seconds=timing
        )
    return HttpOutcome(response.status, response.headers, response.body, instantiate_seconds=timing)


def run_job(
    compiled: CompiledModule,
    spec: SandboxSpec,
    *,
    timeout: float | None,
    name: str,
    max_output: int = 1 << 20,
    inherit_stdio: bool = False,
) -> RunResult:
    """Runs a job once (blocking); output goes to the agent's log, line by line, labelled.

    A run that writes more than ``max_output`` bytes (stdout and stderr together) is
    stopped there: its log ends with exactly that much output and then one line saying so.
    """
    lines = _LineLogger(name)
    result = run(
        compiled,
        spec,
        limits=RunLimits(deadline_seconds=timeout, max_output=max_output),
        inherit_stdio=inherit_stdio,
        sink=None if inherit_stdio else lines,
    )
    lines.flush()
    if result.failure is not None and result.failure.kind == "output":
        lines.emit_final(
            f"output stopped: the run wrote more than {max_output} bytes, the agent's "
            "--job-max-output; the run was ended"
        )
    return result


class _LineLogger:
    """Turns a job's output chunks into one log record per line."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.partial = {"stdout": b"", "stderr": b""}

    def __call__(self, stream: str, data: bytes) -> None:
        *complete, rest = (self.partial[stream] + data).split(b"\n")
        self.partial[stream] = rest[-65536:]
        for line in complete:
            self._emit(stream, line)

    def flush(self) -> None:
        for stream, rest in self.partial.items():
            if rest:
                self._emit(stream, rest)
        self.partial = {"stdout": b"", "stderr": b""}

    def emit_final(self, message: str) -> None:
        """The agent's own last line about a run, after everything the run wrote."""
        _log.warning(message, extra={"service": self.name, "stream": "agent"})

    def _emit(self, stream: str, line: bytes) -> None:
        _log.info(
            line.decode("utf-8", "replace").rstrip("\r"),
            extra={"service": self.name, "stream": stream},
        )


@dataclass(frozen=True)
class JobAttempt:
    attempt: int
    exit_code: int | None
    failure: Failure | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.failure is None and self.exit_code == 0

    @property
    def why(self) -> str:
        """Why the run failed, for people ("" when it did not)."""
        if self.ok:
            return ""
        if self.failure is not None:
            return self.failure.detail
        return f"exited with code {self.exit_code}"


@dataclass
class JobRunner:
    """Runs a job until it succeeds, retrying failures with exponential backoff.

    ``run_once`` runs one attempt (off the event loop); the wait after each failure follows
    ``backoff``; ``backoff_limit`` retries follow the first attempt.
    """

    run_once: Callable[[], Awaitable[RunResult]]
    backoff_limit: int
    backoff: Backoff
    on_attempt: Callable[[JobAttempt], None] | None = None
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def run(self) -> list[JobAttempt]:
        attempts: list[JobAttempt] = []
        for number in range(1, self.backoff_limit + 2):
            started = time.perf_counter()
            result = await self.run_once()
            attempt = JobAttempt(
                number, result.exit_code, result.failure, time.perf_counter() - started
            )
            attempts.append(attempt)
            if self.on_attempt is not None:
                self.on_attempt(attempt)
            if result.ok or number > self.backoff_limit:
                break
            await self.sleep(self.backoff.delay(number))
        return attempts
