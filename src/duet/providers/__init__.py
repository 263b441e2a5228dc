"""CVM providers; each is imported only when chosen, so unused cloud SDKs cost nothing."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from duet.errors import ConfigError
from duet.providers.base import Provider

PROVIDERS: tuple[str, ...] = ("local", "azure", "aws", "gcp")


def make_provider(name: str, state_dir: Path, env: Mapping[str, str]) -> Provider:
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
        return getattr(module, cls).from_env(env, state_dir)  # type: ignore[no-any-return]
    raise ConfigError(f"unknown provider {name!r}; choose one of {', '.join(PROVIDERS)}", code="unknown_provider")
