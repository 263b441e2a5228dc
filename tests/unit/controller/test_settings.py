"""Provider settings files in the seed's azure_config.env form."""

from __future__ import annotations

from pathlib import Path

import pytest

from duet.controller.settings import Settings, read_env_file
from duet.errors import ConfigError


def test_reads_the_seeds_azure_config_env_as_docker_does(tmp_path: Path) -> None:
    path = tmp_path / "azure_config.env"
    path.write_text(
        '# Azure settings\nSUBSCRIPTION_ID=1234\n\nRESOURCE_GROUP_NAME = rg-duet\nLOCATION=westeurope\nTAG="quoted"\nEMPTY=\n'
    )
    assert read_env_file(path) == {
        "SUBSCRIPTION_ID": "1234",
        "RESOURCE_GROUP_NAME": " rg-duet",
        "LOCATION": "westeurope",
        "TAG": '"quoted"',
        "EMPTY": "",
    }


@pytest.mark.parametrize("line", ["JUSTAKEY", "=value", "TWO WORDS=x"])
def test_a_line_that_is_not_key_value_names_its_line(tmp_path: Path, line: str) -> None:
    path = tmp_path / "bad.env"
    path.write_text(f"A=1\n{line}\n")
    with pytest.raises(ConfigError, match=r"bad.env:2: expected KEY=VALUE"):
        read_env_file(path)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as missing:
        read_env_file(tmp_path / "nope.env")
    assert missing.value.code == "env_file_unreadable"


def test_the_ssh_timeouts_default_to_the_ssh_pools_own() -> None:
    from duet.remote import ssh

    settings = Settings(state_dir=Path("state"))
    assert (settings.ssh_connect_timeout_s, settings.ssh_channel_timeout_s, settings.ssh_close_timeout_s) == (
        ssh.CONNECT_TIMEOUT_S, ssh.CHANNEL_TIMEOUT_S, ssh.CLOSE_TIMEOUT_S,
    )  # fmt: skip
    assert settings.ssh_margin_s == ssh.SshPool().margin_s + ssh.CLOSE_TIMEOUT_S  # the service also drops the connection
