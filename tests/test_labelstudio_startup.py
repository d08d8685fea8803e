"""``pasam serve`` refuses settings that would weaken it (half-set basic auth, a
LABEL_STUDIO_URL with user info, non-positive limits) before loading the model, and warns
when it listens beyond loopback without authentication."""

import logging

import pytest
import typer
import uvicorn
from typer.testing import CliRunner

from label_studio_backend.cli import run_server, serve
from label_studio_backend.config import Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in (
        "BASIC_AUTH_USER",
        "BASIC_AUTH_PASS",
        "LABEL_STUDIO_URL",
        "LABEL_STUDIO_HOST",
        "PASAM_DOWNLOAD_TIMEOUT",
        "PASAM_BODY_TIMEOUT",
        "HOST",
        "PORT",
    ):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture()
def served(monkeypatch):
    """uvicorn.run replaced: records (app, kwargs) instead of serving."""
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    return calls


def invoke(args, env):
    cli = typer.Typer()
    cli.command()(serve)
    return CliRunner().invoke(cli, args, env=env)


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"BASIC_AUTH_USER": "ls"}, "BASIC_AUTH_USER is set but BASIC_AUTH_PASS is not"),
        ({"BASIC_AUTH_PASS": "s3cret"}, "BASIC_AUTH_PASS is set but BASIC_AUTH_USER is not"),
        ({"BASIC_AUTH_USER": "ls", "BASIC_AUTH_PASS": ""}, "BASIC_AUTH_PASS is not"),
        ({"LABEL_STUDIO_URL": "http://admin:pw@127.0.0.1:8080"}, "LABEL_STUDIO_URL"),
        ({"LABEL_STUDIO_URL": "http://127.0.0.1:8080\\@evil"}, "LABEL_STUDIO_URL"),
        ({"PASAM_DOWNLOAD_TIMEOUT": "0"}, "PASAM_DOWNLOAD_TIMEOUT"),
        ({"PASAM_BODY_TIMEOUT": "-1"}, "PASAM_BODY_TIMEOUT"),
    ],
    ids=[
        "user only",
        "password only",
        "empty password",
        "URL with user info",
        "URL with a backslash",
        "zero download timeout",
        "negative body timeout",
    ],
)
def test_unsafe_settings_refuse_to_start(tiny_checkpoint, served, env, needle):
    r = invoke(["--checkpoint", str(tiny_checkpoint)], env)
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output
    assert "cannot load the model" not in r.output  # refused before the model is loaded
    assert served == []


def test_half_set_auth_is_refused_by_the_settings_themselves():
    with pytest.raises(ValueError, match="refusing to start"):
        Settings(basic_auth_user="ls").basic_auth()
    assert Settings(basic_auth_user="ls", basic_auth_pass="p").basic_auth() == ("ls", "p")
    assert Settings().basic_auth() is None


@pytest.mark.parametrize(
    "host, auth, warned",
    [
        ("0.0.0.0", False, True),
        ("192.168.1.5", False, True),
        ("::", False, True),
        ("0.0.0.0", True, False),
        ("127.0.0.1", False, False),
        ("localhost", False, False),
        ("::1", False, False),
    ],
)
def test_serving_beyond_loopback_without_auth_warns(
    tiny_checkpoint, served, caplog, host, auth, warned
):
    creds = {"basic_auth_user": "ls", "basic_auth_pass": "pw"} if auth else {}
    caplog.set_level(logging.INFO, logger="label_studio_backend")
    run_server(Settings(checkpoint=tiny_checkpoint, **creds), host=host, port=9999)
    assert len(served) == 1 and served[0][1]["host"] == host
    warnings = [r for r in caplog.records if "without authentication" in r.getMessage()]
    assert len(warnings) == (1 if warned else 0)
    if warned:
        assert (
            warnings[0].levelno == logging.WARNING and "BASIC_AUTH_USER" in warnings[0].getMessage()
        )
    # the app enforces the auth it was given
    from fastapi.testclient import TestClient

    client = TestClient(served[0][0])
    assert client.get("/health").status_code == (401 if auth else 200)
