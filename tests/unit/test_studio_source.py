"""The ``studio://`` data source: what the plan accepts, and the one-line errors a job gets when
the studio cannot serve the snapshot (the download itself is tested against a running studio
in the studio tier)."""

from __future__ import annotations

import socket

import pytest
from pydantic import ValidationError

from kubetune_trainer.data import studio
from kubetune_trainer.plan import DataSource
from kubetune_trainer.uris import SourceError


@pytest.mark.parametrize(
    ("uri", "host", "campaign", "version"),
    [
        ("studio://kubetune-studio.ml:8080/concise@3", "kubetune-studio.ml:8080", "concise", "3"),
        ("studio://studio/helpfulness", "studio", "helpfulness", "latest"),
        ("studio://10.0.0.7:80/a-b@latest", "10.0.0.7:80", "a-b", "latest"),
    ],
)
def test_studio_uris_name_host_campaign_and_version(uri, host, campaign, version) -> None:
    assert DataSource(uri=uri).uri == uri
    assert studio.parse(uri) == studio.StudioSnapshot(host, campaign, version)


@pytest.mark.parametrize(
    "uri", ["studio://host/Campaign", "studio://host/c@v2", "studio://host", "studio:///c@1"]
)
def test_malformed_studio_uris_are_refused_by_the_plan(uri: str) -> None:
    with pytest.raises(
        ValidationError, match=r"studio://HOST\[:PORT\]/CAMPAIGN\[@VERSION\]|names no location"
    ):
        DataSource(uri=uri)


def test_an_unreachable_studio_is_one_line_naming_the_uri() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nothing listens
    uri = f"studio://127.0.0.1:{port}/concise@1"
    with pytest.raises(SourceError, match=rf"^'{uri}': cannot reach the studio at http://"):
        studio.fetch(uri)
