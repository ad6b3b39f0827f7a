"""The shared package: wire boundary, schema export, tokens, config, store."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from sqlalchemy import func, select

from shared import wire
from shared.config import BoothConfig, SignalingConfig, load_config
from shared.errors import AuthError, ConfigError, ProtocolError
from shared.protocol import (
    BoothHello,
    ErrorCode,
    Relay,
    RequestHelp,
    SdpPayload,
    StaffHello,
    StaffRole,
)
from shared.schema import SCHEMA_PATH, protocol_schema, render
from shared.security import (
    check_booth_credential,
    check_password,
    hash_booth_credential,
    hash_password,
    issue_staff_token,
    turn_rest_credentials,
    verify_staff_token,
)
from shared.store import Staff, StaffSkill, create_engine, migrate, session_factory
from shared.store.seed import seed_demo

SECRET = "s" * 32


def test_decode_gives_models_for_each_channel() -> None:
    msg = wire.decode(
        wire.booth_to_server,
        '{"type":"request_help","request_id":"r1","department":"shimin","language":"ja"}',
    )
    assert msg == RequestHelp(request_id="r1", department="shimin", language="ja")
    relay = wire.decode(
        wire.staff_to_server,
        wire.encode(Relay(session_id="s1", payload=SdpPayload(sdp_type="answer", sdp="v=0"))),
    )
    assert isinstance(relay, Relay)
    assert isinstance(relay.payload, SdpPayload)
    assert relay.payload.sdp == "v=0"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", ErrorCode.BAD_JSON),
        ("[1, 2]", ErrorCode.BAD_JSON),
        ('{"type": "no_such_message"}', ErrorCode.BAD_MESSAGE),
        ('{"type": "request_help", "request_id": "r1"}', ErrorCode.BAD_MESSAGE),
        (
            '{"type":"request_help","request_id":"r1","department":"shimin",'
            '"language":"ja","extra":1}',
            ErrorCode.BAD_MESSAGE,
        ),
        ('{"type":"cancel_request","request_id":"bad id with spaces"}', ErrorCode.BAD_MESSAGE),
    ],
)
def test_decode_errors_have_codes(frame: str, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as err:
        wire.decode(wire.booth_to_server, frame)
    assert err.value.code is code


def test_decode_refuses_oversized_before_parsing() -> None:
    frame = json.dumps({"type": "cancel_request", "request_id": "x" * 200_000})
    with pytest.raises(ProtocolError) as err:
        wire.decode(wire.booth_to_server, frame)
    assert err.value.code is ErrorCode.TOO_LARGE


def test_error_message_does_not_echo_values() -> None:
    with pytest.raises(ProtocolError) as err:
        wire.decode(wire.booth_to_server, '{"type":"hello","booth_id":"b1","credential":"short"}')
    assert "short" not in err.value.message.replace("at least", "")
    assert err.value.ref == "hello"


def test_schema_file_is_current_and_validates_messages() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render(), (
        "run `python -m shared.schema --write` after changing shared/protocol.py"
    )
    schema = protocol_schema()["channels"]["staff_to_server"]
    jsonschema.validate(json.loads(wire.encode(StaffHello(token="t" * 20))), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"type": "hello", "token": "t" * 20, "x": 1}, schema)
    booth = protocol_schema()["channels"]["booth_to_server"]
    jsonschema.validate(
        json.loads(wire.encode(BoothHello(booth_id="b1", credential="c" * 20))), booth
    )


def test_staff_token_round_trip_forgery_and_expiry() -> None:
    token = issue_staff_token(SECRET, "sato", StaffRole.HQ, 60, now=1000.0)
    claims = verify_staff_token(SECRET, token, now=1030.0)
    assert (claims.staff_id, claims.role) == ("sato", StaffRole.HQ)
    with pytest.raises(AuthError) as expired:
        verify_staff_token(SECRET, token, now=1061.0)
    assert expired.value.code is ErrorCode.TOKEN_EXPIRED
    with pytest.raises(AuthError) as forged:
        verify_staff_token("o" * 32, token, now=1030.0)
    assert forged.value.code is ErrorCode.AUTH_FAILED
    body, sig = token.split(".")
    tampered = body[:-2] + ("AA" if body[-2:] != "AA" else "BB") + "." + sig
    with pytest.raises(AuthError):
        verify_staff_token(SECRET, tampered, now=1030.0)
    with pytest.raises(AuthError):
        verify_staff_token(SECRET, "garbage", now=1030.0)


def test_credentials_and_passwords() -> None:
    stored = hash_booth_credential("booth-secret-123")
    assert check_booth_credential("booth-secret-123", stored)
    assert not check_booth_credential("booth-secret-124", stored)
    pw = hash_password("正しいパスワード")
    assert pw.startswith("$argon2id$")
    assert check_password("正しいパスワード", pw)
    assert not check_password("wrong", pw)
    assert not check_password("x", "not-a-hash")


def test_turn_rest_credentials_match_coturn_scheme() -> None:
    user, password = turn_rest_credentials("secret", "booth1", 600, now=1_700_000_000)
    assert user == "1700000600:booth1"
    # base64(HMAC-SHA1("secret", user)), computed independently
    import base64
    import hashlib
    import hmac

    expected = base64.b64encode(hmac.new(b"secret", user.encode(), hashlib.sha1).digest())
    assert password == expected.decode()


def test_config_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text(f'port = 9000\nring_timeout_s = 5\ntoken_secret = "{SECRET}"\n')
    monkeypatch.setenv("EKICHIKA_SIGNALING_PORT", "9100")
    loaded = load_config(SignalingConfig, cfg, ring_timeout_s=1.5)
    assert (loaded.port, loaded.ring_timeout_s, loaded.token_secret) == (9100, 1.5, SECRET)
    monkeypatch.setenv("EKICHIKA_BOOTH_DEVICES__CAMERA", "v4l2:/dev/video2")
    booth = load_config(BoothConfig, None, booth_id="b1", credential="c" * 10)
    assert booth.devices.camera == "v4l2:/dev/video2"
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(SignalingConfig, tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("port = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(SignalingConfig, bad)
    with pytest.raises(ConfigError, match="token_secret"):
        load_config(SignalingConfig, None)


async def test_migrate_and_seed_are_idempotent(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}"
    await migrate(url)
    await migrate(url)
    engine = create_engine(url)
    try:
        sessions = session_factory(engine)
        await seed_demo(sessions, {"seiseki-1": "credential-1"}, "pw-1")
        await seed_demo(sessions, {"seiseki-1": "credential-2"}, "pw-2")
        async with sessions() as s:
            assert await s.scalar(select(func.count()).select_from(Staff)) == 3
            skills = (
                await s.scalars(select(StaffSkill).where(StaffSkill.staff_id == "sato"))
            ).all()
            assert {(k.department, k.language) for k in skills} == {
                ("shimin", "ja"),
                ("shimin", "en"),
                ("hoken", "ja"),
                ("hoken", "en"),
            }
            sato = await s.get(Staff, "sato")
            assert sato is not None
            assert check_password("pw-2", sato.password_hash)
    finally:
        await engine.dispose()
