"""Settings from the environment: the seed's variables, secrets, masking."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatsrv.config import ConfigError, Settings

STRONG = "s" * 40


def test_embedded_default_needs_nothing(tmp_path: Path) -> None:
    s = Settings.from_env({"CHATSRV_DATA_DIR": str(tmp_path)})
    assert s.embedded and s.database_url is None and s.http_port == 8080
    first = s.with_embedded_secret()
    again = Settings.from_env({"CHATSRV_DATA_DIR": str(tmp_path)}).with_embedded_secret()
    assert len(first.jwt_secret) >= 32 and first.jwt_secret == again.jwt_secret
    assert (tmp_path / "jwt_secret").stat().st_mode & 0o077 == 0


def test_embedded_ignores_the_seed_default_secret(tmp_path: Path) -> None:
    s = Settings.from_env({"CHATSRV_DATA_DIR": str(tmp_path),
                           "JWT_SECRET": "change-in-production"}).with_embedded_secret()
    assert s.jwt_secret != "change-in-production"


@pytest.mark.parametrize("secret", ["", "change-in-production", "short"])
def test_production_refuses_weak_secrets(secret: str) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env({"DATABASE_URL": "postgresql://x@h/db", "JWT_SECRET": secret})


def test_seed_variables_build_urls() -> None:
    s = Settings.from_env({"DB_HOST": "db", "DB_PORT": "5433", "DB_USER": "chat",
                           "DB_PASSWORD": "p@ss", "DB_NAME": "chatapp", "REDIS_HOST": "cache",
                           "REDIS_PORT": "6380", "HTTP_PORT": "9000", "GRPC_PORT": "9191",
                           "JWT_SECRET": STRONG})
    assert s.database_url == "postgresql://chat:p%40ss@db:5433/chatapp"
    assert s.redis_url == "redis://cache:6380/0"
    assert (s.http_port, s.grpc_port, s.embedded) == (9000, 9191, False)


def test_malformed_numbers_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="HTTP_PORT"):
        Settings.from_env({"HTTP_PORT": "eighty"})


def test_masked_hides_secrets_and_passwords() -> None:
    s = Settings.from_env({"DATABASE_URL": "postgresql://chat:hunter2@db/chat",
                           "JWT_SECRET": STRONG, "TURN_SECRET": "t",
                           "TURN_URLS": "turn:relay.example"})
    shown = s.masked()
    text = repr(shown)
    assert "hunter2" not in text and STRONG not in text
    assert shown["jwt_secret"] == "***" and shown["storage"] == "postgresql"


def test_the_readme_lists_every_setting_as_the_code_defines_it() -> None:
    from chatsrv.config import markdown_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    shown = readme.split("<!-- settings:begin -->\n", 1)[1].split("\n<!-- settings:end -->", 1)[0]
    assert shown == markdown_table(), "README is stale: chatsrv check-config --markdown"


@pytest.mark.parametrize(("env", "message"), [
    ({"DB_TIMEOUT": "0"}, "DB_TIMEOUT must be at least"),
    ({"DATABASE_URL": "mysql://root@db/chat", "JWT_SECRET": STRONG}, "postgresql://"),
    ({"REDIS_URL": "http://cache", "DATABASE_URL": "postgresql://x@h/d", "JWT_SECRET": STRONG},
     "REDIS_URL"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
])
def test_unusable_values_name_their_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


@pytest.mark.parametrize(("env", "message"), [
    # what an unexpanded compose default hands the nodes
    ({"TURN_URLS": "${TURN_URLS:-}", "TURN_SECRET": "s"}, r"TURN_URLS: '\$\{TURN_URLS:-\}'"),
    ({"TURN_URLS": "turn:", "TURN_SECRET": "s"}, "TURN_URLS"),
    ({"TURN_URLS": "turn:relay.example:3478?transport=sctp", "TURN_SECRET": "s"}, "TURN_URLS"),
    ({"TURN_URLS": "http://relay.example", "TURN_SECRET": "s"}, "TURN_URLS"),
    ({"STUN_URLS": "stun:stun.example:70000"}, "STUN_URLS: 'stun:stun.example:70000'"),
    ({"STUN_URLS": "stun:bad host"}, "STUN_URLS"),
    ({"TURN_URLS": "turn:relay.example"}, "TURN_URLS and TURN_SECRET go together"),
    ({"TURN_SECRET": "s"}, "TURN_URLS and TURN_SECRET go together"),
])
def test_malformed_ice_servers_are_refused_at_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_well_formed_ice_servers_are_taken() -> None:
    s = Settings.from_env({"STUN_URLS": "stun:stun.example,stuns:[2001:db8::1]:5349",
                           "TURN_URLS": "turn:relay.example:3478?transport=udp,"
                                        "turns:relay.example:5349?transport=tcp",
                           "TURN_SECRET": "s"})
    assert s.stun_urls == ("stun:stun.example", "stuns:[2001:db8::1]:5349")
    assert len(s.turn_urls) == 2
    assert Settings.from_env({"STUN_URLS": ""}).stun_urls == ()  # no ICE servers at all


def test_web_pages_may_load_attachments_from_redirecting_object_storage() -> None:
    from chatsrv.transport.http.edge import CSP, page_csp

    assert page_csp(Settings.from_env({})) == CSP
    s3 = {"S3_ENDPOINT": "https://s3.example:9000/base", "S3_BUCKET": "b",
          "S3_ACCESS_KEY": "k", "S3_SECRET_KEY": "s"}
    csp = page_csp(Settings.from_env(s3))
    for directive in ("img-src", "media-src", "connect-src"):
        assert f"{directive} 'self' https://s3.example:9000" in csp
    assert "script-src 'self';" in csp  # nothing else widened
    assert page_csp(Settings.from_env({**s3, "S3_REDIRECT": "false"})) == CSP
