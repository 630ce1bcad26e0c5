"""While an http replica serves, its ConfigMaps and Secrets are read again: a change reaches
the next instances without a new revision.

`refresh_config` reads every few seconds; when what it read changed (another fingerprint),
it hands the new configuration over (the runner plans a new sandbox and puts a new order in
place). A read that fails keeps the last good configuration serving and is reported, once per
distinct error, until a read succeeds again. A read that cannot reach the API server (or
write the files) changes nothing at all: the configuration is not known to be wrong, and an
outage is the agent's, shown by its Lease (a replica that failed for it would leave its
service's endpoints while it still serves). The reading, the new order and the report are
the caller's, so this loop holds only the timing and the rules.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from wasmfleet_agent.cluster.config import ConfigError, ResolvedConfig
from wasmfleet_agent.runtime.errors import SandboxConfigError
from wasmfleet_common.kube import NETWORK_ERRORS

__all__ = ["refresh_config"]

log = logging.getLogger(__name__)


async def refresh_config(
    *,
    every: float,
    fingerprint: str,
    read: Callable[[], Awaitable[ResolvedConfig]],
    apply: Callable[[ResolvedConfig], Awaitable[None]],
    report: Callable[[str | None], None],
    key: str,
) -> None:
    """Runs until cancelled, reading the configuration every ``every`` seconds.

    ``fingerprint`` is that of the configuration being served. A configuration with another
    fingerprint goes to ``apply``, which raises `SandboxConfigError` to refuse it (the last
    one keeps serving). A `ConfigError` from ``read`` goes to ``report``, and so does None on
    the first successful read after one; a network error is only logged (once per outage).
    ``key`` names the binding in the log.
    """
    unreadable: str | None = None
    unreachable = False
    while True:
        await asyncio.sleep(every)
        try:
            config = await read()
        except NETWORK_ERRORS as error:
            if not unreachable:
                log.warning(
                    "configuration not read; keeping the last good one, trying again",
                    extra={"binding": key, "error": str(error) or type(error).__name__},
                )
                unreachable = True
            continue
        except ConfigError as error:
            unreachable = False
            if str(error) != unreadable:
                log.warning(
                    "configuration unreadable; keeping the last good one",
                    extra={"binding": key, "error": str(error)},
                )
                unreadable = str(error)
                report(unreadable)
            continue
        unreachable = False
        if unreadable is not None:
            log.info("configuration readable again", extra={"binding": key})
            unreadable = None
            report(None)
        if config.fingerprint == fingerprint:
            continue
        try:
            await apply(config)
        except SandboxConfigError as failure:
            log.warning("new configuration refused", extra={"binding": key, "error": str(failure)})
            continue
        fingerprint = config.fingerprint
        log.info("configuration changed; new instances see it", extra={"binding": key})
