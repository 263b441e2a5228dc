"""CVM providers; each is imported only when chosen, so unused cloud SDKs cost nothing."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from duet.errors import ConfigError
from duet.protocol.lifecycle import PROVIDER_NAMES
from duet.providers.base import Provider

PROVIDERS: tuple[str, ...] = PROVIDER_NAMES


PREFIX_SETTINGS = {"azure": ("DUET_AZURE_PREFIX", "PREFIX"), "aws": ("DUET_AWS_PREFIX",), "gcp": ("DUET_GCP_PREFIX",)}


def controller_scoped(name: str, env: Mapping[str, str], controller_id: str | None) -> dict[str, str]:
    """Cloud resources are named and tagged with a prefix, and a restarted controller deletes
    whatever carries its prefix but belongs to no CVM it knows. Two controllers sharing a
    resource group, account or project must therefore not share a prefix: unless one is set,
    each controller's prefix is derived from its own id."""
    names = PREFIX_SETTINGS.get(name, ())
    if controller_id is None or not names or any(env.get(setting) for setting in names):
        return dict(env)
    return {**env, names[0]: f"duet-{controller_id[:8]}"}


def make_provider(name: str, state_dir: Path, env: Mapping[str, str], *, controller_id: str | None = None) -> Provider:
    if name == "local":
        from duet.providers.local import LocalProvider

        return LocalProvider(state_dir / "local-cvms")
    if name in ("azure", "aws", "gcp"):
        import importlib

        try:
            module = importlib.import_module(f"duet.providers.{name}")
        except ImportError as exc:
            raise ConfigError(
                f"provider {name!r} needs its SDK: pip install 'duet[{name}]' ({exc})", code="provider_unavailable"
            ) from None
        cls = {"azure": "AzureProvider", "aws": "AwsProvider", "gcp": "GcpProvider"}[name]
        return getattr(module, cls).from_env(controller_scoped(name, env, controller_id), state_dir)  # type: ignore[no-any-return]
    raise ConfigError(f"unknown provider {name!r}; choose one of {', '.join(PROVIDERS)}", code="unknown_provider")
