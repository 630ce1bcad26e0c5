"""Tag to digest: the operator asks the registry once per rollout, so every node runs one digest.

Uses the OCI client the agents use (the same auth, retries and TLS rules), with credentials
from the service's pull secrets read by the same rule (`auth.pull_secret_credentials`). Errors
come back as a reason the status can show: ModuleNotFound when the registry does not have the
tag, PullFailed for everything else (refused credentials, an unreachable registry),
InvalidImage for a reference that cannot be parsed.
"""

from __future__ import annotations

from collections.abc import Sequence

from wasmfleet_api.base import LocalObjectReference
from wasmfleet_common.kube import NETWORK_ERRORS, ApiError, KubeClient, resource_for
from wasmfleet_oci import auth, errors
from wasmfleet_oci.client import ClientSettings, RegistryClient
from wasmfleet_oci.reference import parse_reference

__all__ = ["ResolveError", "Resolver"]

SECRETS = resource_for("v1", "Secret")


class ResolveError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Resolver:
    """Resolves module references to manifest digests."""

    def __init__(self, kube: KubeClient, settings: ClientSettings) -> None:
        self.kube = kube
        self.client = RegistryClient(settings=settings)

    async def close(self) -> None:
        await self.client.close()

    async def resolve(
        self, namespace: str, image: str, pull_secrets: Sequence[LocalObjectReference]
    ) -> str:
        try:
            reference = parse_reference(image)
        except ValueError as error:
            raise ResolveError("InvalidImage", f"{image}: {error}") from None
        if reference.digest is not None and reference.tag is None:
            return reference.digest  # pinned by the user: nothing to ask
        credentials = await self._credentials(namespace, pull_secrets, reference.registry)
        try:
            return await self.client.fetch_digest(reference=reference, credentials=credentials)
        except errors.NotFound:
            raise ResolveError(
                "ModuleNotFound", f"{image} does not exist in its registry"
            ) from None
        except errors.Unauthorized as error:
            raise ResolveError(
                "PullFailed", f"{image}: the registry refused access: {error}"
            ) from None
        except errors.RegistryError as error:
            raise ResolveError("PullFailed", f"{image}: {error}") from None
        except NETWORK_ERRORS as error:
            raise ResolveError("PullFailed", f"{image}: registry unreachable: {error}") from None

    async def _credentials(
        self, namespace: str, secrets: Sequence[LocalObjectReference], registry: str
    ) -> auth.Credentials | None:
        read = []
        for ref in secrets:
            try:
                read.append((ref.name, await self.kube.get(SECRETS, ref.name, namespace)))
            except ApiError as error:
                if not error.not_found:
                    raise ResolveError(
                        "PullFailed", f"cannot read pull secret {ref.name}: {error.reason}"
                    ) from None
                read.append((ref.name, None))
        try:
            configs = auth.pull_secret_credentials(read)
        except auth.PullSecretError as error:
            raise ResolveError("PullFailed", str(error)) from None
        return auth.find_credentials(configs, registry=registry)
