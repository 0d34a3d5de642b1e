"""resp_client: wire format, reply parsing, hostile servers, pooling, outages, real Redis."""

import random
import shutil
import ssl
import subprocess
import threading
import time
import urllib.parse

import pytest

import resp_client
from fake_redis import Delay, Dribble, FakeRedis, Hangup, Silence
from helpers import free_port, unavailable
from redis_server import RedisServer
from resp_client import (
    AuthenticationError,
    ProtocolError,
    RedisConnectionError,
    RedisError,
    RedisTimeoutError,
    RespClient,
    ResponseError,
    parse_url,
)


def client_for(fake, **options):
    return RespClient("127.0.0.1", fake.port, **options)


def reply_to(fake, *script, **options):
    """The reply a client returns for one command that the fake answers with script."""
    fake.script(*script)
    with client_for(fake, **options) as client:
        return client.execute("GET", "k")


# -- what goes on the wire ------------------------------------------------------------------

def test_command_is_sent_as_one_array_of_bulk_strings(fake_redis):
    with client_for(fake_redis) as client:
        client.execute("SET", "k", b"v\r\n\x00", 12, -1.5)
    assert bytes(fake_redis.received) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\nv\r\n\x00\r\n$2\r\n12\r\n$4\r\n-1.5\r\n")


def test_text_is_sent_as_utf8(fake_redis):
    with client_for(fake_redis) as client:
        client.execute("ECHO", "héllo")
    assert bytes(fake_redis.received) == b"*2\r\n$4\r\nECHO\r\n$6\r\nh\xc3\xa9llo\r\n"


@pytest.mark.parametrize("bad", [None, True, ["a"], {"a": 1}, object()])
def test_unsupported_argument_types_raise_type_error_before_anything_is_sent(fake_redis, bad):
    with client_for(fake_redis) as client, pytest.raises(TypeError, match="cannot send"):
        client.execute("SET", "k", bad)
    assert fake_redis.connections == 0


def test_client_connects_lazily(fake_redis):
    RespClient("127.0.0.1", fake_redis.port)
    assert fake_redis.connections == 0


def test_auth_with_username_and_select_run_on_every_new_connection(fake_redis):
    fake_redis.script(b"+OK\r\n", b"+OK\r\n", b":1\r\n")
    with client_for(fake_redis, username="app", password="s3cret", db=3) as client:
        assert client.incr("counter") == 1
    assert bytes(fake_redis.received) == (
        b"*3\r\n$4\r\nAUTH\r\n$3\r\napp\r\n$6\r\ns3cret\r\n"
        b"*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n"
        b"*2\r\n$4\r\nINCR\r\n$7\r\ncounter\r\n")


def test_protocol_3_opts_in_with_hello_carrying_the_credentials(fake_redis):
    with client_for(fake_redis, password="pw", protocol=3) as client:
        client.ping()
    assert fake_redis.commands[0] == [b"HELLO", b"3", b"AUTH", b"default", b"pw"]


def test_wrong_password_raises_authentication_error():
    with FakeRedis(password="right") as fake, client_for(fake, password="wrong") as client, \
            pytest.raises(AuthenticationError) as caught:
        client.ping()
    assert caught.value.code == "WRONGPASS"


# -- replies ----------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    (b"+OK\r\n", "OK"),
    (b"$5\r\nhello\r\n", b"hello"),
    (b"$0\r\n\r\n", b""),
    (b":42\r\n", 42),
    (b":-7\r\n", -7),
    (b"$-1\r\n", None),
    (b"*-1\r\n", None),
    (b"*0\r\n", []),
    (b"*3\r\n:1\r\n$1\r\na\r\n*1\r\n+x\r\n", [1, b"a", ["x"]]),
    (b"$6\r\na\r\nb\x00\xff\r\n", b"a\r\nb\x00\xff"),
    # RESP3
    (b"_\r\n", None),
    (b"%-1\r\n", None), (b"~-1\r\n", None), (b"!-1\r\n", None),  # the null map, set and error of RESP3's drafts
    (b",3.25\r\n", 3.25),
    (b",inf\r\n", float("inf")),
    (b",-inf\r\n", float("-inf")),
    (b"#t\r\n", True),
    (b"#f\r\n", False),
    (b"=9\r\ntxt:hello\r\n", b"hello"),
    (b"(3492890328409238509324850943850943825024385\r\n", 3492890328409238509324850943850943825024385),
    (b"%2\r\n+a\r\n:1\r\n$1\r\nb\r\n*2\r\n:1\r\n:2\r\n", {"a": 1, b"b": [1, 2]}),
    (b"~3\r\n:1\r\n:2\r\n:1\r\n", {1, 2}),
    (b"|1\r\n+ttl\r\n:3600\r\n:5\r\n", 5),
    (b">2\r\n+message\r\n$2\r\nhi\r\n", ["message", b"hi"]),
])
def test_each_reply_type_maps_to_its_python_value(fake_redis, raw, expected):
    assert reply_to(fake_redis, raw) == expected


def test_resp3_nan_double_is_a_float_nan(fake_redis):
    value = reply_to(fake_redis, b",nan\r\n")
    assert value != value


def test_error_reply_raises_response_error_with_its_code(fake_redis):
    with pytest.raises(ResponseError) as caught:
        reply_to(fake_redis, b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n")
    assert caught.value.code == "WRONGTYPE"
    assert "wrong kind of value" in str(caught.value)


def test_resp3_blob_error_raises_response_error(fake_redis):
    with pytest.raises(ResponseError) as caught:
        reply_to(fake_redis, b"!21\r\nSYNTAX invalid syntax\r\n")
    assert caught.value.code == "SYNTAX"


def test_error_inside_an_array_is_a_value_not_raised(fake_redis):
    reply = reply_to(fake_redis, b"*2\r\n+OK\r\n-ERR value is not an integer or out of range\r\n")
    assert reply[0] == "OK"
    assert isinstance(reply[1], ResponseError) and reply[1].code == "ERR"


def test_reply_split_at_every_byte_parses(fake_redis):
    raw = b"*4\r\n$6\r\nab\r\ncd\r\n:12345\r\n%1\r\n+k\r\n,1.5\r\n-ERR boom\r\n"
    reply = reply_to(fake_redis, Dribble(raw))
    assert reply[:3] == [b"ab\r\ncd", 12345, {"k": 1.5}]
    assert reply[3].message == "ERR boom"


def test_sixteen_megabyte_bulk_is_read_whole(fake_redis):
    payload = bytes(range(256)) * (16 * 4096) + b"\r\n"
    assert reply_to(fake_redis, b"$%d\r\n%s\r\n" % (len(payload), payload)) == payload


def test_pipeline_sends_one_write_and_returns_replies_in_order_with_errors_in_place(fake_redis):
    fake_redis.script(b"+OK\r\n", b"-ERR nope\r\n", b":3\r\n")
    with client_for(fake_redis) as client:
        replies = client.pipeline([("SET", "a", 1), ("BAD",), ("INCR", "a")])
    assert replies[0] == "OK" and replies[2] == 3
    assert isinstance(replies[1], ResponseError) and replies[1].message == "ERR nope"
    assert bytes(fake_redis.received).count(b"*") == 3


def test_pipeline_takes_commands_encoded_once(fake_redis):
    incr = resp_client.encode_command(("INCR", "counter"))
    with client_for(fake_redis) as client:
        assert client.pipeline([incr, ("INCR", "counter"), incr]) == [1, 2, 3]
    assert bytes(fake_redis.received) == incr * 3


def test_a_transaction_takes_one_place_in_a_pipeline_runs_whole_and_keeps_errors_in_place(redis_server):
    block = resp_client.encode_transaction([("INCR", "n"), ("HINCRBY", "n", "f", 1), ("INCR", "n")])
    refused = resp_client.encode_transaction([("INCR", "n"), ("INCR",)])  # a wrong arity: refused whole
    with resp_client.RespClient("127.0.0.1", redis_server.port) as client:
        replies = client.pipeline([("SET", "n", 5), block, refused, ("GET", "n")])
        again = client.pipeline([block])  # encoded once, sent as often as needed
    assert replies[0] == "OK" and len(replies) == 4
    assert replies[1][0] == 6 and replies[1][2] == 7 and replies[1][1].code == "WRONGTYPE"  # Redis ran them all
    assert isinstance(replies[2], ResponseError) and replies[2].code == "ERR"  # none of these: the refusal is named
    assert "wrong number of arguments" in replies[2].message
    assert replies[3] == b"7" and again[0][2] == 9


def test_incr_refuses_a_reply_that_is_not_an_integer(fake_redis):
    fake_redis.script(b"$1\r\n7\r\n")
    with client_for(fake_redis) as client, pytest.raises(ProtocolError):
        client.incr("counter")


# -- a hostile or broken server ---------------------------------------------------------------

@pytest.mark.parametrize("raw, message", [
    (b"$536870913\r\n", "exceeds the limit"),
    (b"*-2\r\n", "negative"),
    (b"$-5\r\n", "negative"),
    (b"$abc\r\n", "expected an integer"),
    (b":1 2\r\n", "expected an integer"),
    (b": 12\r\n", "expected an integer"),
    (b"?what\r\n", "unknown reply type"),
    (b"\r\n", "empty reply line"),
    (b"$3\r\nabcde\r\n", "not followed by CRLF"),
    (b"#x\r\n", "invalid boolean"),
    (b",one\r\n", "invalid double"),
    (b"=3\r\nabc\r\n", "verbatim"),
    (b"*1\r\n" * 201 + b":1\r\n", "nested deeper"),
    (b"|1\r\n+a\r\n+b\r\n" * 201 + b":1\r\n", "nested deeper"),
])
def test_malformed_reply_raises_protocol_error(fake_redis, raw, message):
    with pytest.raises(ProtocolError, match=message):
        reply_to(fake_redis, raw)


def test_array_longer_than_the_cap_is_refused(fake_redis):
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        reply_to(fake_redis, b"*11\r\n", max_array_length=10)


def test_line_without_end_is_refused_once_past_the_cap(fake_redis):
    with pytest.raises(ProtocolError, match="longer than"):
        reply_to(fake_redis, b"+" + b"x" * (resp_client.MAX_LINE_LENGTH + 10))


def test_connection_is_replaced_after_a_protocol_error(fake_redis):
    fake_redis.script(b"?\r\n", b":1\r\n")
    with client_for(fake_redis) as client:
        with pytest.raises(ProtocolError):
            client.incr("counter")
        fake_redis.wait_for_closed_connections(1)
        resp_client_wait_for_backoff()
        assert client.incr("counter") == 1
    assert fake_redis.connections == 2


def test_random_garbage_only_ever_raises_redis_errors(fake_redis):
    rng = random.Random(1234)
    alphabet = b"*$:+-_,#!=(%~|>\r\n0123456789-ab"
    for _ in range(300):
        garbage = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        fake_redis.script(Hangup(garbage))
        with client_for(fake_redis, timeout=0.5) as client:
            try:
                client.execute("GET", "k")
            except RedisError:
                pass


def test_silent_server_raises_timeout_within_the_timeout(fake_redis):
    fake_redis.script(Silence())
    started = time.monotonic()
    with pytest.raises(RedisTimeoutError):
        reply_to(fake_redis, timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 0.3 + 0.5


def test_dribbling_server_cannot_stretch_a_call_past_its_timeout(fake_redis):
    fake_redis.script(Dribble(b"$30\r\n" + b"x" * 30 + b"\r\n", pause=0.05))
    started = time.monotonic()
    with pytest.raises(RedisTimeoutError):
        reply_to(fake_redis, timeout=0.3)
    assert time.monotonic() - started < 0.3 + 0.5


def test_delayed_reply_within_the_timeout_is_returned(fake_redis):
    assert reply_to(fake_redis, Delay(0.1, b":5\r\n"), timeout=1.0) == 5


@pytest.mark.parametrize("reset", [False, True])
def test_server_closing_mid_reply_raises_connection_error(fake_redis, reset):
    said = "connection to Redis lost: .*reset" if reset else "^Redis closed the connection in the middle of a reply$"
    with pytest.raises(RedisConnectionError, match=said):
        reply_to(fake_redis, Hangup(b"$10\r\nabc", reset=reset))


def test_refused_port_raises_connection_error():
    with RespClient("127.0.0.1", free_port()) as client, pytest.raises(RedisConnectionError, match="refused"):
        client.incr("counter")


def test_unknown_host_raises_connection_error_within_the_connect_timeout():
    started = time.monotonic()
    with RespClient("no-such-host.invalid", connect_timeout=0.5) as client, \
            pytest.raises((RedisConnectionError, RedisTimeoutError)):
        client.incr("counter")
    assert time.monotonic() - started < 1.0


def test_rediss_never_falls_back_to_plaintext(fake_redis):
    with RespClient.from_url(f"rediss://127.0.0.1:{fake_redis.port}", timeout=1) as client, \
            pytest.raises(RedisConnectionError):
        client.incr("counter")
    assert b"INCR" not in fake_redis.received
    assert fake_redis.received.startswith(b"\x16\x03")  # a TLS handshake record


# -- never twice, fail fast, recover ---------------------------------------------------------

def resp_client_wait_for_backoff():
    """Let the first fail-fast window pass: the passing of time is what is under test here."""
    time.sleep(resp_client.BACKOFF_FIRST + 0.05)


def test_idle_connection_closed_by_the_server_is_replaced_before_use(fake_redis):
    fake_redis.script(Hangup(b":1\r\n"), b":2\r\n")
    with client_for(fake_redis) as client:
        assert client.incr("counter") == 1
        fake_redis.wait_for_closed_connections(1)
        assert client.incr("counter") == 2
    assert fake_redis.commands == [[b"INCR", b"counter"]] * 2


@pytest.mark.slow  # waits out real timeouts and delays
def test_timed_out_command_is_not_sent_again(fake_redis):
    fake_redis.script(Silence())
    with client_for(fake_redis, timeout=0.2) as client:
        with pytest.raises(RedisTimeoutError):
            client.incr("counter")
        resp_client_wait_for_backoff()
        assert client.incr("counter") == 1
    assert fake_redis.commands == [[b"INCR", b"counter"]] * 2


def test_errors_say_whether_the_command_may_have_reached_the_server(fake_redis):
    fake_redis.script(Silence())
    with client_for(fake_redis, timeout=0.2) as client, pytest.raises(RedisTimeoutError) as after_sending:
        client.incr("counter")
    with RespClient("127.0.0.1", free_port()) as client, pytest.raises(RedisConnectionError) as before_sending:
        client.incr("counter")
    with FakeRedis(password="right") as fake, client_for(fake, password="wrong") as client, \
            pytest.raises(AuthenticationError) as during_setup:
        client.incr("counter")
    assert after_sending.value.command_sent is True
    assert before_sending.value.command_sent is False
    assert during_setup.value.command_sent is False


@pytest.mark.slow  # waits out real timeouts and delays
def test_calls_fail_fast_while_redis_is_unavailable_and_only_one_caller_probes(fake_redis):
    fake_redis.script(Silence(), Silence())
    with client_for(fake_redis, timeout=0.5) as client:
        with pytest.raises(RedisTimeoutError):
            client.incr("counter")
        started = time.monotonic()
        with pytest.raises(RedisConnectionError, match="unavailable"):
            client.incr("counter")
        assert time.monotonic() - started < 0.3  # far below the 0.5 s timeout
        resp_client_wait_for_backoff()

        outcomes = []
        barrier = threading.Barrier(20)

        def call():
            barrier.wait()
            started = time.monotonic()
            try:
                client.incr("counter")
                outcomes.append(("ok", 0))
            except RedisError as exc:
                outcomes.append((type(exc).__name__, time.monotonic() - started))

        threads = [threading.Thread(target=call) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
    kinds = sorted(kind for kind, _ in outcomes)
    assert kinds == ["RedisConnectionError"] * 19 + ["RedisTimeoutError"]
    assert max(elapsed for kind, elapsed in outcomes if kind == "RedisConnectionError") < 0.3
    assert fake_redis.connections == 2


def test_pool_never_opens_more_than_max_connections(fake_redis):
    with client_for(fake_redis, max_connections=2) as client:
        threads = [threading.Thread(target=lambda: [client.incr("c") for _ in range(50)]) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert client.incr("c") == 401
    assert fake_redis.connections <= 2


@pytest.mark.slow  # waits out real timeouts and delays
def test_callers_waiting_for_a_busy_pool_are_served_in_turn_not_starved(fake_redis):
    fake_redis.script(*[Delay(0.005, b":1\r\n")] * 160)  # every call takes a while
    errors = []

    def calls():
        try:
            for _ in range(20):
                client.incr("c")
        except RedisError as exc:
            errors.append(exc)

    # 8 callers on 2 connections: each waits its turn, about 4 calls long, never the 0.5 s timeout
    with client_for(fake_redis, max_connections=2, timeout=0.5) as client:
        threads = [threading.Thread(target=calls) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert errors == []
    assert len(fake_redis.commands) == 160


# -- URLs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, expected", [
    ("redis://", dict(host="localhost", port=6379, db=0, username=None)),
    ("redis://cache:6380/2", dict(host="cache", port=6380, db=2)),
    ("redis://:p%40ss@h", dict(host="h", username=None, password="p@ss")),
    ("redis://user:pw@h/1", dict(username="user", password="pw", db=1)),
    ("redis://h?db=4", dict(db=4)),
    ("redis://[::1]:7000", dict(host="::1", port=7000, address="[::1]:7000")),
    ("unix:///run/redis.sock?db=2&password=pw", dict(unix_socket="/run/redis.sock", db=2, password="pw")),
    ("redis://h?protocol=3", dict(protocol=3)),
])
def test_from_url_reads_every_part(url, expected):
    client, parts = RespClient.from_url(url), parse_url(url)
    for name, value in expected.items():
        assert (parts[name] if name == "password" else getattr(client, name)) == value, name


def test_from_url_rediss_uses_a_verifying_tls_context():
    client = RespClient.from_url("rediss://h")
    assert client.ssl_context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize("url, message", [
    ("http://h", "must start with redis://, rediss:// or unix://"),
    ("redis://h:99999", "port"),
    ("redis://h:abc", "port"),
    ("redis://h/x", "database"),
    ("redis://h?dbb=1", r"unknown \?option"),
    ("redis://h:0", "port"),
    ("redis://default:PASS", "port must be a number from 1 to 65535 .*needs an @"),
    ("redis://redis..default.svc", "host is not a valid host name"),
    ("redis://" + "a" * 64 + ".svc", "host is not a valid host name"),
    ("redis://user@h", "username needs a password"),
    ("unix://", "socket path"),
])
def test_from_url_rejects_bad_urls_with_a_clear_message(url, message):
    with pytest.raises(ValueError, match=message):
        RespClient.from_url(url)


PASSWORD = "pw1/pw2?pw3#pw4@pw5:pw6"  # every character that can end a URL part
PASSWORD_PIECES = ("pw1", "pw2", "pw3", "pw4", "pw5", "pw6")


@pytest.mark.parametrize("url", [
    f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0",
    f"redis://user:{PASSWORD}@127.0.0.1:{free_port()}",
    f"redis://:{PASSWORD}@127.0.0.1/x",
    f"redis://:{PASSWORD}@127.0.0.1:99999/0",
    f"redis://:{PASSWORD}@127.0.0.1/0?dbb=1",
    f"redis://:{PASSWORD}@127.0.0.1/0#part",
    f"redis:/:{PASSWORD}@127.0.0.1",
    f"redis//:{PASSWORD}@127.0.0.1",
    f"http://:{PASSWORD}@127.0.0.1",
    f"redis://{PASSWORD}@127.0.0.1",
    f"redis://127.0.0.1/0?password={PASSWORD}",
    f"redis://127.0.0.1/0?password={urllib.parse.quote(PASSWORD)}&db=x",
    f"redis://127.0.0.1:{free_port()}/0?password={urllib.parse.quote(PASSWORD)}",
    f"unix://:{PASSWORD}@/nonexistent/redis.sock?db=y",
    f"unix://:{PASSWORD}@/nonexistent/redis.sock",
])
def test_no_part_of_a_password_appears_in_any_message_whatever_the_url(url):
    try:
        client = RespClient.from_url(url, connect_timeout=0.2, timeout=0.2)
    except ValueError as exc:
        said = str(exc)
    else:
        with client, pytest.raises(RedisError) as failed:
            client.incr("counter")
        said = f"{client!r} {client.address} {failed.value}"
    assert not [piece for piece in PASSWORD_PIECES if piece in said], said


def test_a_password_may_hold_url_delimiters_unescaped():
    settings = resp_client.parse_url(f"redis://user:{PASSWORD}@cache:6380/3")
    assert (settings["username"], settings["password"]) == ("user", PASSWORD)
    assert (settings["host"], settings["port"], settings["db"]) == ("cache", 6380, 3)


def test_sets_and_map_keys_treat_nested_arrays_alike():
    def read(raw):
        chunks = [raw]
        reader = resp_client.ReplyReader(lambda: chunks.pop() if chunks else b"", None, 1 << 20, 1 << 20)
        return reader.read()

    assert read(b"~2\r\n*2\r\n:1\r\n:2\r\n:3\r\n") == {(1, 2), 3}
    assert read(b"%1\r\n*2\r\n:1\r\n:2\r\n+v\r\n") == {(1, 2): "v"}
    for raw in (b"~1\r\n%0\r\n", b"%1\r\n~0\r\n+v\r\n"):
        with pytest.raises(ProtocolError, match="set member or a map key"):
            read(raw)


def test_repr_never_shows_the_password():
    assert "hunter2" not in repr(RespClient.from_url("redis://:hunter2@h"))


# -- against a real redis-server --------------------------------------------------------------

def test_real_redis_strings_lists_hashes_and_missing_keys(redis_server):
    with RespClient.from_url(redis_server.url) as client:
        assert client.ping() is True
        assert client.execute("SET", "greeting", "hello") == "OK"
        assert client.execute("GET", "greeting") == b"hello"
        assert client.execute("GET", "missing") is None
        assert client.execute("DEL", "greeting", "missing") == 1
        assert client.incr("counter") == 1
        assert client.incr("counter") == 2
        assert client.execute("RPUSH", "list", "a", b"b", 3) == 3
        assert client.execute("LRANGE", "list", 0, -1) == [b"a", b"b", b"3"]
        client.execute("HSET", "hash", "f", "v", "g", 1.5)
        assert client.execute("HGETALL", "hash") == [b"f", b"v", b"g", b"1.5"]


def test_real_redis_errors_carry_their_code(redis_server):
    with RespClient.from_url(redis_server.url) as client:
        client.execute("RPUSH", "list", "a")
        with pytest.raises(ResponseError) as wrongtype:
            client.incr("list")
        client.execute("SET", "word", "abc")
        with pytest.raises(ResponseError) as not_integer:
            client.incr("word")
        assert client.ping()
    assert wrongtype.value.code == "WRONGTYPE"
    assert not_integer.value.code == "ERR" and "not an integer" in not_integer.value.message


def test_real_redis_transaction_keeps_an_error_inside_exec(redis_server):
    with RespClient.from_url(redis_server.url) as client:
        replies = client.pipeline([("MULTI",), ("SET", "k", "text"), ("INCR", "k"), ("EXEC",)])
    assert replies[:3] == ["OK", "QUEUED", "QUEUED"]
    assert replies[3][0] == "OK"
    assert isinstance(replies[3][1], ResponseError) and "not an integer" in replies[3][1].message


def test_real_redis_resp3_maps_become_dicts(redis_server):
    with RespClient.from_url(redis_server.url + "?protocol=3") as client:
        client.execute("HSET", "hash", "f", "v")
        assert client.execute("HGETALL", "hash") == {b"f": b"v"}


def test_real_redis_select_keeps_databases_apart(redis_server):
    with RespClient.from_url(redis_server.url + "/5") as db5, RespClient.from_url(redis_server.url) as db0:
        db5.execute("SET", "k", "five")
        assert db0.execute("GET", "k") is None
        assert db5.execute("GET", "k") == b"five"


def test_real_redis_auth_right_and_wrong_password():
    with RedisServer(password="correct horse") as server:
        with RespClient("127.0.0.1", server.port, password="correct horse") as good:
            assert good.incr("counter") == 1
        with RespClient("127.0.0.1", server.port, password="wrong") as bad, pytest.raises(AuthenticationError):
            bad.incr("counter")
        with RespClient("127.0.0.1", server.port) as none, pytest.raises(AuthenticationError):
            none.incr("counter")


def test_real_redis_over_a_unix_socket():
    with RedisServer(unix_socket=True) as server, RespClient.from_url(f"unix://{server.unix_socket}") as client:
        assert client.incr("counter") == 1


def test_real_redis_over_tls_verifies_the_certificate(tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable("openssl is not installed (apt-get install openssl)")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "1",
                    "-keyout", key, "-out", cert, "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    with RedisServer(tls=(cert, key)) as server:
        trusting = ssl.create_default_context(cafile=cert)
        with RespClient.from_url(f"rediss://localhost:{server.port}", ssl_context=trusting) as client:
            assert client.incr("counter") == 1
        with RespClient.from_url(f"rediss://localhost:{server.port}") as client, \
                pytest.raises(RedisConnectionError, match="certificate"):
            client.incr("counter")
        with RespClient("127.0.0.1", server.port, timeout=0.5) as plaintext, pytest.raises(RedisError):
            plaintext.incr("counter")


def test_real_redis_restart_costs_no_failed_call_and_no_double_incr():
    with RedisServer(appendonly=True) as server, RespClient("127.0.0.1", server.port) as client:
        assert client.incr("counter") == 1
        server.restart()
        assert client.incr("counter") == 2
        assert client.execute("GET", "counter") == b"2"


@pytest.mark.slow
def test_real_redis_32_threads_of_500_incr_on_one_client_count_exactly_16000(redis_server):
    with RespClient.from_url(redis_server.url) as client:
        errors = []

        def work():
            try:
                for _ in range(500):
                    client.incr("counter")
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert client.execute("GET", "counter") == b"16000"


# -- what mutation testing found unpinned: texts, edges and the back-off's arithmetic ----------

@pytest.mark.parametrize("url, expected", [
    ("redis://h", dict(host="h", port=6379, db=0, username=None, password=None, protocol=2)),
    ("redis://h:1", dict(host="h", port=1, db=0, username=None, password=None, protocol=2)),
    ("redis://h:65535", dict(host="h", port=65535, db=0, username=None, password=None, protocol=2)),
    ("redis://[::1]", dict(host="::1", port=6379, db=0, username=None, password=None, protocol=2)),
    ("redis://X:pw@h//3", dict(host="h", port=6379, db=3, username="X", password="pw", protocol=2)),
    ("redis://:pa://ss@h", dict(host="h", port=6379, db=0, username=None, password="pa://ss", protocol=2)),
    ("redis://:pw@h?password=", dict(host="h", port=6379, db=0, username=None, password="", protocol=2)),
    ("redis://h?username=bob&password=p&protocol=3&db=",
     dict(host="h", port=6379, db=0, username="bob", password="p", protocol=3)),
])
def test_a_url_reads_as_exactly_these_settings(url, expected):
    assert parse_url(url) == expected


_PORT = ("Redis URL's port must be a number from 1 to 65535 (a user:password needs an @ before the host: "
         "redis://user:password@host:port)")


@pytest.mark.parametrize("url, message", [
    ("http://h", "Redis URL must start with redis://, rediss:// or unix://"),
    ("redis://h:0", _PORT), ("redis://h:65536", _PORT),
    ("redis://h/X", "Redis URL's database (/db or ?db=) must be a whole number"),
    ("redis://h?dbb=1", "Redis URL has an unknown ?option (allowed: db, password, username, protocol)"),
    ("redis://h?protocol=4", "Redis URL's ?protocol= must be 2 or 3"),
    ("redis://h#f", "a Redis URL has no #fragment (percent-encode a '#' in the password as %23)"),
    ("redis://h]", "Redis URL's host is not a valid host name or IP address"),
    ("redis://[::1:6379", "Redis URL's host is not a valid host name or IP address"),
    ("redis://user@h", "a Redis URL with a username needs a password"),
    ("unix://", "a unix:// Redis URL needs a socket path, e.g. unix:///run/redis.sock"),
    ("redis://a@b/c@d", "a Redis URL's credentials must come before the host: redis://[[user]:password@]host "
                        "(percent-encode '@' elsewhere as %40)"),
])
def test_a_bad_url_is_refused_with_exactly_this_line(url, message):
    with pytest.raises(ValueError) as refused:
        parse_url(url)
    assert str(refused.value) == message


@pytest.mark.parametrize("raw, expected", [
    (b"+caf\xc3\xa9 \xff\r\n", "café \ufffd"),
    (b"*2\r\n-ERR bad \xff\r\n!8\r\nERR x \xff\xfe\r\n", ["ERR bad \ufffd", "ERR x \ufffd\ufffd"]),
    (b"=4\r\ntxt:\r\n", b""),  # a verbatim string with a format and nothing else
    (b"~2\r\n*2\r\n:1\r\n:2\r\n*0\r\n", {(1, 2), ()}),
])
def test_replies_that_are_not_utf8_or_are_at_an_edge_still_read(fake_redis, raw, expected):
    reply = reply_to(fake_redis, raw)
    assert [r.message for r in reply] == expected if isinstance(expected, list) else reply == expected


def test_a_reply_nested_just_within_the_limit_reads_in_every_aggregate_type(fake_redis):
    depth = resp_client.MAX_DEPTH - 1
    for opener in (b"*1\r\n", b"%1\r\n+k\r\n", b">1\r\n", b"|1\r\n+a\r\n+b\r\n"):
        reply = reply_to(fake_redis, opener * depth + b":7\r\n")
        for _ in range(depth if opener[:1] != b"|" else 0):
            reply = reply["k"] if isinstance(reply, dict) else reply[0]
        assert reply == 7, opener
    keyed = reply_to(fake_redis, b"%1\r\n" + b"*1\r\n" * (depth - 1) + b":1\r\n:2\r\n")
    assert list(keyed.values()) == [2]


def test_a_message_quotes_at_most_64_bytes_of_what_it_refuses(fake_redis):
    junk = b"y" * 100
    for raw in (b"#" + junk + b"\r\n", b"," + junk + b"\r\n", b"_" + junk + b"\r\n",
                b"=100\r\n" + junk + b"\r\n"):
        with pytest.raises(ProtocolError) as refused:
            reply_to(fake_redis, raw)
        assert "y" * 64 in str(refused.value) and "y" * 65 not in str(refused.value), raw


@pytest.mark.parametrize("raw, message", [
    (b"$11\r\n", "bulk length 11 exceeds the limit of 10"),
    (b"*11\r\n", "aggregate length 11 exceeds the limit of 10"),
])
def test_limits_hold_at_their_edge_and_say_which(fake_redis, raw, message):
    assert reply_to(fake_redis, b"$10\r\n0123456789\r\n", max_bulk_length=10) == b"0123456789"
    assert reply_to(fake_redis, b"*10\r\n" + b":1\r\n" * 10, max_array_length=10) == [1] * 10
    with pytest.raises(ProtocolError) as refused:
        reply_to(fake_redis, raw, max_bulk_length=10, max_array_length=10)
    assert str(refused.value) == message


def test_incr_names_itself_and_the_reply_when_it_is_not_an_integer(fake_redis):
    fake_redis.script(b"+seven\r\n")
    with client_for(fake_redis) as client, pytest.raises(ProtocolError) as refused:
        client.incr("counter")
    assert str(refused.value) == "INCR answered 'seven', not an integer"


def test_an_unhashable_set_member_is_named_in_the_error(fake_redis):
    with pytest.raises(ProtocolError) as refused:
        reply_to(fake_redis, b"~1\r\n%1\r\n+k\r\n+v\r\n")
    assert str(refused.value) == "{'k': 'v'} cannot be a set member or a map key"


@pytest.mark.parametrize("message, code", [
    ("WRONGTYPE Operation against a key", "WRONGTYPE"), ("READONLY\tYou can't write", "ERR"),
    ("something lowercase", "ERR"), ("OOM", "OOM"),
])
def test_an_error_reply_s_code_is_its_first_word_when_that_is_upper_case(message, code):
    assert ResponseError(message).code == code


def test_an_os_error_is_described_by_its_reason_else_its_text_else_its_type():
    assert resp_client._reason(ConnectionRefusedError(111, "Connection refused")) == "Connection refused"
    assert resp_client._reason(TimeoutError("timed out")) == "timed out"
    assert resp_client._reason(OSError()) == "OSError"


def test_the_back_off_doubles_from_the_first_window_to_its_cap_and_any_answer_ends_it():
    outage, error = resp_client._Backoff(), RedisConnectionError("refused")
    windows = []
    for _ in range(12):
        before = time.monotonic()
        outage.record(error)
        windows.append(round(outage.retry_at - before, 2))
    first, cap = resp_client.BACKOFF_FIRST, resp_client.BACKOFF_CAP
    assert windows == [round(min(first * 2 ** n, cap), 2) for n in range(12)] and windows[-1] == cap
    assert windows[1] == round(2 * first, 2) and windows[0] < cap
    outage.record(ResponseError("WRONGTYPE not an outage"))  # the server answered
    assert (outage.failures, outage.clear) == (0, True)
    outage.record(error)
    with pytest.raises(RedisConnectionError, match=r"^Redis at h:1 is unavailable \(retry in "):
        outage.admit("h:1")  # one failure again: failing fast, for the first window
    outage.probing = True
    outage.end_probe()
    assert outage.probing is False
    outage.record(None)
    assert outage.clear


def test_stray_bytes_after_a_reply_retire_the_connection_so_they_never_answer_the_next_command(fake_redis):
    fake_redis.script(b"+PONG\r\n+STRAY\r\n", b"$1\r\nv\r\n")
    with client_for(fake_redis) as client:
        assert client.ping() is True
        assert client.execute("GET", "k") == b"v"
    assert fake_redis.connections == 2


def test_a_reply_read_past_the_buffer_leaves_the_next_one_whole(fake_redis):
    big = b"z" * 200_000
    fake_redis.script(b"$200000\r\n" + big + b"\r\n", b"+next\r\n")
    with client_for(fake_redis) as client:
        assert client.pipeline([("GET", "a"), ("GET", "b")]) == [big, "next"]
