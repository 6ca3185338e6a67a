"""The command model: parsing, state changes, replies, limiter (plain data, no broker)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest

from edge_agent.control import rules as c
from edge_agent.control.rules import Command, CommandState, Refusal, parse_command
from edge_agent.health.pacing import TokenBucket

SCHEMAS = Path(c.__file__).parents[1] / "protocol" / "schemas"


def schema(name: str) -> dict:
    return json.loads((SCHEMAS / name).read_text())


@pytest.mark.parametrize("feature,payload,value", [
    ("paused", b"ON", True), ("paused", b"OFF", False), ("paused", b"true", True),
    ("paused", b"false", False), ("paused", b"1", True), ("paused", b"0", False),
    ("paused", b'{"value": false}', False), ("paused", b"pause", True),
    ("paused", b"resume", False), ("paused", b'"OFF"', False),
    ("max_publish_fps", b"5", 5.0), ("max_publish_fps", b"2.5", 2.5),
    ("max_publish_fps", b'{"value": 0}', 0.0), ("max_publish_fps", b"0.01", 0.01),
    ("max_publish_fps", b"120.0", 120.0), ("frame_every", b"10", 10),
    ("frame_every", b'{"value": 3}', 3), ("frame_every", b"0", 0),
    ("mask_encoding", b"rle", "rle"), ("mask_encoding", b'"rle"', "rle"),
    ("mask_encoding", b'{"value": "png"}', "png"), ("snapshot", b"", None),
    ("snapshot", b"PRESS", None), ("snapshot", b"{}", None), ("reload", b"null", None),
    ("reload", b'{"value": null}', None),
])
def test_valid_commands(feature, payload, value):
    got = parse_command(f"{feature}/set", payload)
    assert got == Command(feature, value)
    assert type(got.value) is type(value)


@pytest.mark.parametrize("suffix,payload,needle", [
    ("paused/set", b"maybe", "expected ON or OFF"),
    ("paused/set", b"{not json", "not valid JSON"),
    ("paused/set", b'{"value": true, "x": 1}', "unknown key(s) x"),
    ("paused/set", b"[1]", "JSON list"),
    ("paused/set", b"\xff\xfe", "not UTF-8"),
    ("paused/set", b"O" * 257, "exceeds 256"),
    ("max_publish_fps/set", b"fast", "expected a number"),
    ("max_publish_fps/set", b"-1", "no sign"),
    ("max_publish_fps/set", b"121", "out of range"),
    ("max_publish_fps/set", b"nan", "expected a decimal number"),
    ("max_publish_fps/set", b"1e400", "no sign or exponent"),
    ("max_publish_fps/set", b"true", "expected a number"),
    ("frame_every/set", b"2.5", "expected an integer"),
    ("frame_every/set", b"10001", "out of range"),
    ("mask_encoding/set", b"jpeg", "expected one of png, rle"),
    ("snapshot/set", b"now please", "expected an empty payload"),
    ("snapshot/set", b"false", "expected an empty payload"),
    ("explode/set", b"1", "unknown command 'explode'"),
    ("paused/state", b"ON", "not a command topic"),
    ("paused", b"ON", "not a command topic"),
    ("a/b/set", b"ON", "not a command topic"),
])
def test_refusals_are_one_line_and_never_raise(suffix, payload, needle):
    got = parse_command(suffix, payload)
    assert isinstance(got, Refusal)
    assert needle in got.reason
    assert "\n" not in got.reason and len(got.reason) < 200


@pytest.mark.parametrize("feature,payload,needle", [
    # issue 17 (9): what the lenient parser took; documented forms stay (above)
    ("max_publish_fps", b"1e-320", "no sign or exponent"),
    ("max_publish_fps", b'{"value": 1e-320}', "no sign or exponent"),
    ("max_publish_fps", b"0.0000001", "below 0.01"),
    ("max_publish_fps", b"1_0", "expected a decimal number"),
    ("max_publish_fps", b'"7"', "the JSON string"),
    ("max_publish_fps", b'{"value": "7"}', "the JSON string"),
    ("max_publish_fps", b" 7 ", "whitespace"),
    ("max_publish_fps", b"7\n", "whitespace"),
    ("max_publish_fps", b"NaN", "expected a decimal number"),
    ("max_publish_fps", b"inf", "expected a decimal number"),
    ("max_publish_fps", b"-0", "no sign"),
    ("max_publish_fps", b'{"value": NaN}', "not valid JSON"),
    ("max_publish_fps", b'{"value": Infinity}', "not valid JSON"),
    ("frame_every", b"1e3", "expected an integer"),
    ("frame_every", b"3.0", "expected an integer"),
    ("frame_every", b"1_000", "expected an integer"),
    ("paused", b"ON\n", "whitespace"),
    ("paused", b" ON", "whitespace"),
    ("paused", b"on", "expected ON or OFF"),
    ("paused", b"PAUSE", "expected ON or OFF"),
    ("paused", b"yes", "expected ON or OFF"),
    ("paused", b"2", "expected ON or OFF"),
    ("mask_encoding", b"RLE", "expected one of png, rle"),
    ("mask_encoding", b"rle\n", "whitespace"),
    ("snapshot", b"press", "expected an empty payload"),
    ("snapshot", b"1", "expected an empty payload"),
])
def test_strict_values(feature, payload, needle):
    got = parse_command(f"{feature}/set", payload)
    assert isinstance(got, Refusal), got
    assert needle in got.reason and "\n" not in got.reason


def test_an_oversized_payload_says_its_real_size():
    got = parse_command("paused/set", b"O" * 512, size=100_000)
    assert isinstance(got, Refusal) and "payload of 100000 bytes exceeds 256" in got.reason


def test_retained_commands_are_refused():
    got = parse_command("paused/set", b"ON", retained=True)
    assert isinstance(got, Refusal) and "retained" in got.reason


def test_features_per_id():
    one = c.features_for("cam-01", "cam-01", ["cam-01"])
    assert set(one) == set(c.FEATURES)
    agent = c.features_for("host", "host", ["cam-a", "cam-b"])
    assert agent == (c.RELOAD,)
    cam = c.features_for("cam-a", "host", ["cam-a", "cam-b"])
    assert c.RELOAD not in cam and c.SNAPSHOT in cam
    got = parse_command("reload/set", b"", allowed=cam)
    assert isinstance(got, Refusal) and "not a command of this id" in got.reason
    assert c.features_for("other", "host", ["cam-a"]) == ()


def test_garbage_never_raises():
    import random
    rnd = random.Random(7)
    for _ in range(2000):
        feature = rnd.choice(c.FEATURES + ("", "x", "paused/x"))
        payload = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 40)))
        got = parse_command(f"{feature}/set", payload)
        assert isinstance(got, (Command, Refusal))


def test_topics():
    assert c.set_topic("segedge", "cam-01", "paused") == "segedge/cam-01/paused/set"
    assert c.state_topic("segedge", "cam-01", "paused") == "segedge/cam-01/paused/state"
    assert c.subscription("segedge", "cam-01") == "segedge/cam-01/+/set"
    assert c.split_topic("segedge", "segedge/cam-01/paused/set") == ("cam-01", "paused/set")
    assert c.split_topic("segedge", "segedge/cam-01/paused/state") is None
    assert c.split_topic("segedge", "other/cam-01/paused/set") is None
    assert c.split_topic("segedge", "segedge/cam-01/set") is None


def test_apply_changes_only_what_was_asked():
    s0 = CommandState(max_publish_fps=10.0)
    s1, reply = s0.apply(Command("max_publish_fps", 2.0), "cam-01", ts=5.0)
    assert s1 == replace(s0, max_publish_fps=2.0)
    assert reply.accepted and reply.changed and reply.value == 2.0 and reply.ts == 5.0
    s2, again = s1.apply(Command("max_publish_fps", 2.0), "cam-01")
    assert s2 == s1 and again.accepted and not again.changed
    s3, paused = s1.apply(parse_command("paused/set", b"ON"), "cam-01")
    assert s3.paused and s3.max_publish_fps == 2.0


def test_refusal_changes_nothing():
    s0 = CommandState()
    s1, reply = s0.apply(parse_command("max_publish_fps/set", b"9999"), "cam-01")
    assert s1 is s0
    assert reply.result == "refused" and "out of range" in reply.reason and not reply.changed
    assert "refused" in reply.log_line()


def test_actions_leave_state_and_finish_with_the_hook_result():
    s0 = CommandState()
    s1, reply = s0.apply(Command("reload"), "cam-01", ts=1.0)
    assert s1 is s0 and reply.accepted and reply.value is None
    bad = c.finish_action(reply, "bundle refused: sha256 mismatch", ts=2.0)
    assert bad.result == "refused" and bad.reason == "reload: bundle refused: sha256 mismatch"
    assert bad.ts == 2.0
    assert c.finish_action(reply, None) == reply


def test_replies_match_schema():
    validator = jsonschema.Draft202012Validator(schema("command_reply.schema.json"))
    s = CommandState()
    for suffix, payload in [("paused/set", b"ON"), ("paused/set", b"?"), ("snapshot/set", b""),
                            ("nope/set", b""), ("mask_encoding/set", b"rle")]:
        _, reply = s.apply(parse_command(suffix, payload), "cam-01", ts=1.5)
        validator.validate(json.loads(reply.to_json()))
    failed = c.finish_action(s.apply(Command("reload"), "cam-01")[1], "no manifest")
    validator.validate(json.loads(failed.to_json()))


def test_state_messages_and_settings_schema():
    s = CommandState(paused=True, max_publish_fps=2.5, frame_every=3, mask_encoding="rle")
    msgs = s.state_messages("segedge", "cam-01")
    assert msgs == {"segedge/cam-01/paused/state": "ON",
                    "segedge/cam-01/max_publish_fps/state": "2.5",
                    "segedge/cam-01/frame_every/state": "3",
                    "segedge/cam-01/mask_encoding/state": "rle"}
    # every state payload parses back as a command to the same value (a dashboard can echo it)
    for feature in c.SETTINGS:
        back = parse_command(f"{feature}/set", s.state_payload(feature).encode())
        assert back == Command(feature, s.value(feature))
    validator = jsonschema.Draft202012Validator(schema("settings.schema.json"))
    validator.validate(json.loads(s.settings_json("cam-01")))
    validator.validate(json.loads(s.to_json()))


def test_persisted_state_round_trip_and_refusal():
    base = CommandState()
    s = CommandState(paused=True, max_publish_fps=1.0, frame_every=0, mask_encoding="rle")
    assert CommandState.from_dict(json.loads(s.to_json()), base) == s
    assert CommandState.from_dict({"schema_version": 1, "paused": True}, base) == \
        replace(base, paused=True)
    for bad in [None, [], {"paused": True}, {"schema_version": 1, "evil": 1},
                {"schema_version": 1, "max_publish_fps": 1e9}]:
        assert isinstance(CommandState.from_dict(bad, base), Refusal)


def test_token_bucket_bounds_a_flood():
    now = [0.0]
    bucket = TokenBucket(rate=5.0, burst=10, clock=lambda: now[0])
    assert sum(bucket.allow() for _ in range(1000)) == 10  # the burst, then nothing
    assert bucket.dropped == 990
    now[0] += 1.0  # one second refills 5
    assert sum(bucket.allow() for _ in range(100)) == 5
    now[0] += 1000.0  # never more than the burst
    assert sum(bucket.allow() for _ in range(100)) == 10
    now[0] -= 5.0  # a clock going back refills nothing and does not break
    assert not bucket.allow()
    # steady traffic at the rate always passes
    allowed = 0
    for _ in range(100):
        now[0] += 0.2
        allowed += bucket.allow()
    assert allowed == 100


def test_token_bucket_rejects_nonsense():
    with pytest.raises(ValueError):
        TokenBucket(rate=0)
    with pytest.raises(ValueError):
        TokenBucket(burst=0)
