"""Tests for mqttv5.broker.authn: PasswordAuthenticator and CompositeAuthenticator."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from mqttv5.broker.auth import AnonymousPolicy, AuthRequest, AuthResult
from mqttv5.broker.authn import (
    AuthProvider,
    CompositeAuthenticator,
    PasswordAuthenticator,
    lockout_key,
)
from mqttv5.broker.passwords import PasswordFile, Pbkdf2Hash, hash_password
from mqttv5.protocol.errors import ConfigError
from mqttv5.protocol.packets import Connect
from mqttv5.protocol.properties import Properties
from mqttv5.protocol.reason_codes import ReasonCode

RC = ReasonCode

# One PBKDF2 iteration keeps these tests fast; the code path is the same as with 1000.
FILE_TEXT = (
    f"alice:{hash_password(b'alice-pw', 'pbkdf2', 1)}\n"
    f"bob:{hash_password(b'bob-pw', 'pbkdf2', 1)}\n"
    f"olduser:{hash_password(b'old-pw', 'sha512')}\n"
)


def request(
    username: str | None = None,
    password: bytes | None = None,
    address: str = "192.0.2.1",
    method: str | None = None,
) -> AuthRequest:
    props = Properties()
    if method is not None:
        props.authentication_method = method
    connect = Connect(client_id="c1", username=username, password=password, properties=props)
    return AuthRequest(connect, address, 50000, "test", False)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(allow_anonymous: bool = False, **kwargs: Any) -> PasswordAuthenticator:
    return PasswordAuthenticator(PasswordFile.parse(FILE_TEXT), allow_anonymous, **kwargs)


async def resolve(answer: AuthResult | Awaitable[AuthResult]) -> AuthResult:
    return answer if isinstance(answer, AuthResult) else await answer


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


class CountingVerify:
    """Replaces Pbkdf2Hash.verify: counts calls and concurrency; optionally waits for a gate."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, gate: threading.Event | None = None):
        self.calls = 0
        self.running = 0
        self.max_running = 0
        self.gate = gate
        self.lock = threading.Lock()
        original = Pbkdf2Hash.verify

        def verify(entry: Pbkdf2Hash, password: bytes) -> bool:
            with self.lock:
                self.calls += 1
                self.running += 1
                self.max_running = max(self.max_running, self.running)
            try:
                if self.gate is not None:
                    assert self.gate.wait(30)
                return original(entry, password)
            finally:
                with self.lock:
                    self.running -= 1

        monkeypatch.setattr(Pbkdf2Hash, "verify", verify)


class TestDecisions:
    def test_anonymous(self) -> None:
        assert make(allow_anonymous=True).authenticate(request()) == AuthResult(RC.SUCCESS)
        refused = make(allow_anonymous=False).authenticate(request())
        assert isinstance(refused, AuthResult)
        assert refused.reason_code == RC.NOT_AUTHORIZED

    def test_password_without_user_name_is_anonymous(self) -> None:
        answer = make(allow_anonymous=False).authenticate(request(None, b"alice-pw"))
        assert isinstance(answer, AuthResult)
        assert answer.reason_code == RC.NOT_AUTHORIZED

    def test_enhanced_authentication_refused(self) -> None:
        answer = make(allow_anonymous=True).authenticate(request("alice", None, method="SCRAM"))
        assert isinstance(answer, AuthResult)
        assert answer.reason_code == RC.BAD_AUTHENTICATION_METHOD

    def test_good_and_bad_passwords(self) -> None:
        async def main() -> None:
            auth = make()
            good = auth.authenticate(request("alice", b"alice-pw"))
            assert not isinstance(good, AuthResult)  # PBKDF2 runs off the event loop
            assert await resolve(good) == AuthResult(RC.SUCCESS, username="alice")
            bad = await resolve(auth.authenticate(request("alice", b"bob-pw")))
            assert bad.reason_code == RC.BAD_USER_NAME_OR_PASSWORD
            assert bad.username is None
            auth.close()

        run(main())

    def test_missing_password(self) -> None:
        answer = make().authenticate(request("alice", None))
        assert isinstance(answer, AuthResult)
        assert answer.reason_code == RC.BAD_USER_NAME_OR_PASSWORD

    def test_unknown_user_is_hashed_against_a_decoy(self) -> None:
        async def main() -> None:
            auth = make()
            # the decoy is alice's entry, so even her password does not log in "mallory"
            answer = auth.authenticate(request("mallory", b"alice-pw"))
            assert not isinstance(answer, AuthResult)  # takes as long as a real check
            assert (await answer).reason_code == RC.BAD_USER_NAME_OR_PASSWORD
            assert auth.stats.hashes == 1
            assert auth.stats.failures == 1
            auth.close()

        run(main())

    def test_unknown_user_with_empty_file(self) -> None:
        auth = PasswordAuthenticator(PasswordFile.parse(""), False)
        answer = auth.authenticate(request("alice", b"x"))
        assert isinstance(answer, AuthResult)
        assert answer.reason_code == RC.BAD_USER_NAME_OR_PASSWORD

    def test_sha512_is_checked_inline(self) -> None:
        auth = make()
        assert auth.authenticate(request("olduser", b"old-pw")) == AuthResult(
            RC.SUCCESS, username="olduser"
        )
        wrong = auth.authenticate(request("olduser", b"x"))
        assert isinstance(wrong, AuthResult)
        assert wrong.reason_code == RC.BAD_USER_NAME_OR_PASSWORD

    def test_failed_logins_logged_without_password(self, caplog: pytest.LogCaptureFixture) -> None:
        async def main() -> None:
            auth = make()
            await resolve(auth.authenticate(request("alice", b"TopSecret-1", "198.51.100.7")))
            await resolve(auth.authenticate(request("ghost", b"TopSecret-2", "198.51.100.7")))
            auth.close()

        with caplog.at_level(logging.WARNING, logger="mqttv5.broker"):
            run(main())
        assert "Failed login of 'alice' from 198.51.100.7: bad password" in caplog.text
        assert "Failed login of 'ghost' from 198.51.100.7: unknown user" in caplog.text
        assert "TopSecret" not in caplog.text

    def test_outcome_recorded_even_if_nobody_awaits(self) -> None:
        async def main() -> None:
            auth = make()
            auth.authenticate(request("alice", b"wrong"))  # the client hung up: never awaited
            while auth.pending:
                await asyncio.sleep(0.001)
            await asyncio.sleep(0)
            assert auth.stats.failures == 1
            auth.close()

        run(main())


class TestLockout:
    def test_lockout_before_hashing(self, monkeypatch: pytest.MonkeyPatch) -> None:
        counter = CountingVerify(monkeypatch)

        async def main() -> None:
            clock = Clock()
            auth = make(lockout_failures=3, lockout_window=60, lockout_seconds=100, clock=clock)
            for _ in range(3):
                answer = await resolve(auth.authenticate(request("alice", b"guess")))
                assert answer.reason_code == RC.BAD_USER_NAME_OR_PASSWORD
            assert counter.calls == 3
            # locked out: refused at once, even with the right password, without hashing
            locked = auth.authenticate(request("alice", b"alice-pw"))
            assert isinstance(locked, AuthResult)
            assert locked.reason_code == RC.BANNED
            unknown = auth.authenticate(request("nobody", b"x"))
            assert isinstance(unknown, AuthResult)
            assert unknown.reason_code == RC.BANNED
            assert counter.calls == 3
            assert auth.stats.lockouts == 1
            assert auth.stats.refused_locked == 2
            # another address is not affected
            other = await resolve(auth.authenticate(request("alice", b"alice-pw", "192.0.2.2")))
            assert other.reason_code == RC.SUCCESS
            # the lockout ends
            clock.now += 101
            again = await resolve(auth.authenticate(request("alice", b"alice-pw")))
            assert again.reason_code == RC.SUCCESS
            auth.close()

        run(main())

    def test_failures_outside_the_window_do_not_lock(self) -> None:
        async def main() -> None:
            clock = Clock()
            auth = make(lockout_failures=3, lockout_window=10, clock=clock)
            for _ in range(5):
                answer = await resolve(auth.authenticate(request("alice", b"guess")))
                assert answer.reason_code == RC.BAD_USER_NAME_OR_PASSWORD
                clock.now += 6  # never three within 10 s
            assert auth.stats.lockouts == 0
            auth.close()

        run(main())

    def test_anonymous_refusals_and_missing_passwords(self) -> None:
        auth = make(lockout_failures=2, clock=Clock())
        for _ in range(5):
            auth.authenticate(request())  # refused anonymous logins are not guesses
        answers = [auth.authenticate(request("alice", None)) for _ in range(3)]
        assert [a.reason_code for a in answers if isinstance(a, AuthResult)] == [
            RC.BAD_USER_NAME_OR_PASSWORD,
            RC.BAD_USER_NAME_OR_PASSWORD,
            RC.BANNED,
        ]

    def test_ipv6_counted_per_64(self) -> None:
        auth = make(lockout_failures=2, clock=Clock())
        auth.authenticate(request("alice", None, "2001:db8:1:2::10"))
        auth.authenticate(request("alice", None, "2001:db8:1:2:ffff::1"))
        same_64 = auth.authenticate(request("alice", None, "2001:db8:1:2::99"))
        other_64 = auth.authenticate(request("alice", None, "2001:db8:1:3::10"))
        assert isinstance(same_64, AuthResult)
        assert same_64.reason_code == RC.BANNED
        assert isinstance(other_64, AuthResult)
        assert other_64.reason_code == RC.BAD_USER_NAME_OR_PASSWORD

    def test_disabled(self) -> None:
        auth = make(lockout_failures=0)
        for _ in range(20):
            answer = auth.authenticate(request("alice", None))
            assert isinstance(answer, AuthResult)
            assert answer.reason_code == RC.BAD_USER_NAME_OR_PASSWORD

    def test_tracked_addresses_bounded(self) -> None:
        auth = make(lockout_failures=5, max_tracked_addresses=10, clock=Clock())
        for i in range(50):
            auth.authenticate(request("alice", None, f"10.0.0.{i}"))
        assert len(auth._failures._by_key) <= 10

    @pytest.mark.parametrize(
        ("address", "key"),
        [
            ("192.0.2.1", "192.0.2.1"),
            ("::ffff:192.0.2.1", "192.0.2.1"),
            ("2001:db8::1", "2001:db8::/64"),
            ("fe80::1%eth0", "fe80::/64"),
            ("not-an-address", "not-an-address"),
        ],
    )
    def test_lockout_key(self, address: str, key: str) -> None:
        assert lockout_key(address) == key


class TestCache:
    def test_success_cached_failures_not(self, monkeypatch: pytest.MonkeyPatch) -> None:
        counter = CountingVerify(monkeypatch)

        async def main() -> None:
            clock = Clock()
            auth = make(cache_seconds=60, clock=clock)
            assert (
                await resolve(auth.authenticate(request("alice", b"alice-pw")))
            ).reason_code == 0
            for _ in range(20):  # a flood of reconnects: answered at once, no rehash
                answer = auth.authenticate(request("alice", b"alice-pw"))
                assert answer == AuthResult(RC.SUCCESS, username="alice")
            assert counter.calls == 1
            assert auth.stats.cache_hits == 20
            for _ in range(2):
                bad = await resolve(auth.authenticate(request("alice", b"nope")))
                assert bad.reason_code == RC.BAD_USER_NAME_OR_PASSWORD
            assert counter.calls == 3
            # the cache is per user: bob is not let in with alice's password
            assert (await resolve(auth.authenticate(request("bob", b"alice-pw")))).reason_code == (
                RC.BAD_USER_NAME_OR_PASSWORD
            )
            clock.now += 61  # expired: hashed again
            assert (
                await resolve(auth.authenticate(request("alice", b"alice-pw")))
            ).reason_code == 0
            assert counter.calls == 5
            auth.close()

        run(main())

    def test_cache_bounded(self) -> None:
        async def main() -> None:
            auth = make(cache_size=1, clock=Clock())
            await resolve(auth.authenticate(request("alice", b"alice-pw")))
            await resolve(auth.authenticate(request("bob", b"bob-pw")))
            assert len(auth._cache) == 1
            assert not isinstance(auth.authenticate(request("alice", b"alice-pw")), AuthResult)
            auth.close()

        run(main())

    def test_cache_key_holds_no_password(self) -> None:
        async def main() -> None:
            auth = make()
            await resolve(auth.authenticate(request("alice", b"alice-pw")))
            (key,) = auth._cache._expiry
            assert b"alice" not in key
            assert len(key) == 32  # an HMAC-SHA256 under a random per-process key
            auth.close()

        run(main())


class TestConcurrency:
    def test_at_most_max_concurrent_hashes(self, monkeypatch: pytest.MonkeyPatch) -> None:
        gate = threading.Event()
        counter = CountingVerify(monkeypatch, gate)

        async def main() -> None:
            auth = make(max_concurrent=2, queue_limit=10, cache_seconds=0)
            answers = [auth.authenticate(request("alice", b"alice-pw")) for _ in range(8)]
            assert auth.pending == 8
            await asyncio.sleep(0.2)
            assert counter.running == 2  # two threads busy, six checks waiting
            gate.set()
            results = await asyncio.gather(*(resolve(a) for a in answers))
            assert all(r.reason_code == RC.SUCCESS for r in results)
            assert counter.max_running == 2
            assert counter.calls == 8
            assert auth.pending == 0
            auth.close()

        run(main())

    def test_server_busy_when_the_queue_is_full(self, monkeypatch: pytest.MonkeyPatch) -> None:
        gate = threading.Event()
        counter = CountingVerify(monkeypatch, gate)

        async def main() -> None:
            auth = make(max_concurrent=1, queue_limit=2, cache_seconds=0)
            waiting = [auth.authenticate(request("alice", b"alice-pw")) for _ in range(3)]
            busy = auth.authenticate(request("alice", b"alice-pw"))
            assert isinstance(busy, AuthResult)  # answered at once
            assert busy.reason_code == RC.SERVER_BUSY
            assert auth.stats.busy == 1
            assert auth.stats.failures == 0  # not a failed login
            gate.set()
            results = await asyncio.gather(*(resolve(a) for a in waiting))
            assert [r.reason_code for r in results] == [RC.SUCCESS] * 3
            assert counter.calls == 3
            # room again
            assert (await resolve(auth.authenticate(request("bob", b"bob-pw")))).reason_code == 0
            auth.close()

        run(main())

    def test_event_loop_not_blocked(self, monkeypatch: pytest.MonkeyPatch) -> None:
        gate = threading.Event()
        CountingVerify(monkeypatch, gate)

        async def main() -> None:
            auth = make()
            answer = auth.authenticate(request("alice", b"alice-pw"))
            ticks = 0
            for _ in range(5):
                await asyncio.sleep(0.01)
                ticks += 1
            assert ticks == 5  # the loop ran while the hash was stuck in its thread
            gate.set()
            assert (await resolve(answer)).reason_code == RC.SUCCESS
            auth.close()

        run(main())


class TestReload:
    def test_reload_reads_the_file_and_clears_the_cache(self, tmp_path: Path) -> None:
        path = tmp_path / "passwd"
        path.write_text(f"alice:{hash_password(b'one', 'pbkdf2', 1)}\n")

        async def main() -> None:
            auth = PasswordAuthenticator(str(path), False)
            assert (await resolve(auth.authenticate(request("alice", b"one")))).reason_code == 0
            assert isinstance(auth.authenticate(request("alice", b"one")), AuthResult)  # cached
            path.write_text(f"alice:{hash_password(b'two', 'pbkdf2', 1)}\n")
            auth.reload()
            old = await resolve(auth.authenticate(request("alice", b"one")))
            assert old.reason_code == RC.BAD_USER_NAME_OR_PASSWORD
            assert (await resolve(auth.authenticate(request("alice", b"two")))).reason_code == 0
            # a broken file is refused and the previous one stays in force
            path.write_text("alice:plain\n")
            with pytest.raises(ConfigError, match="line 1"):
                auth.reload()
            assert (await resolve(auth.authenticate(request("alice", b"two")))).reason_code == 0
            auth.close()

        run(main())

    def test_bad_file_at_start(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="cannot read"):
            PasswordAuthenticator(str(tmp_path / "missing"), False)
        with pytest.raises(ValueError, match="max_concurrent"):
            make(max_concurrent=0)

    def test_reload_needs_a_path(self) -> None:
        with pytest.raises(ValueError, match="not loaded from a path"):
            make().reload()


# --- composition ------------------------------------------------------------------------------


class Fixed:
    """A provider with a fixed answer (None: no opinion), optionally asynchronous."""

    def __init__(self, answer: AuthResult | None, *, slow: bool = False) -> None:
        self.answer = answer
        self.slow = slow
        self.asked = 0

    def check(self, request: AuthRequest) -> AuthResult | Awaitable[AuthResult | None] | None:
        self.asked += 1
        if not self.slow:
            return self.answer

        async def later() -> AuthResult | None:
            await asyncio.sleep(0)
            return self.answer

        return later()


ACCEPT_A = AuthResult(RC.SUCCESS, username="a")
ACCEPT_B = AuthResult(RC.SUCCESS, username="b")
REFUSE = AuthResult(RC.NOT_AUTHORIZED, reason_string="no")


class TestComposite:
    def test_providers_are_auth_providers(self) -> None:
        assert isinstance(Fixed(None), AuthProvider)
        assert isinstance(make(), AuthProvider)
        assert not isinstance(AnonymousPolicy(True), AuthProvider)

    def test_first_opinion_wins(self) -> None:
        abstain, refuse, accept = Fixed(None), Fixed(REFUSE), Fixed(ACCEPT_A)
        composite = CompositeAuthenticator([abstain, refuse, accept], "first")
        assert composite.authenticate(request("x", b"y")) == REFUSE
        assert accept.asked == 0
        composite = CompositeAuthenticator([abstain, accept, refuse], "first")
        assert composite.authenticate(request("x", b"y")) == ACCEPT_A

    def test_all_must_accept(self) -> None:
        composite = CompositeAuthenticator([Fixed(ACCEPT_A), Fixed(None), Fixed(ACCEPT_B)], "all")
        assert composite.authenticate(request("x", b"y")) == ACCEPT_A  # first acceptance's user
        composite = CompositeAuthenticator([Fixed(ACCEPT_A), Fixed(REFUSE), Fixed(ACCEPT_B)], "all")
        assert composite.authenticate(request("x", b"y")) == REFUSE

    @pytest.mark.parametrize("mode", ["first", "all"])
    def test_nobody_has_an_opinion(self, mode: Any) -> None:
        composite = CompositeAuthenticator([Fixed(None)], mode)
        named = composite.authenticate(request("x", b"y"))
        assert isinstance(named, AuthResult)
        assert named.reason_code == RC.BAD_USER_NAME_OR_PASSWORD
        anonymous = composite.authenticate(request())
        assert isinstance(anonymous, AuthResult)
        assert anonymous.reason_code == RC.NOT_AUTHORIZED
        method = composite.authenticate(request(method="SCRAM-SHA-256"))
        assert isinstance(method, AuthResult)
        assert method.reason_code == RC.BAD_AUTHENTICATION_METHOD
        open_door = CompositeAuthenticator([Fixed(None)], mode, allow_anonymous=True)
        assert open_door.authenticate(request()) == AuthResult(RC.SUCCESS)

    def test_continue_authentication_returned_at_once(self) -> None:
        step = AuthResult(RC.CONTINUE_AUTHENTICATION)
        later = Fixed(ACCEPT_A)
        composite = CompositeAuthenticator([Fixed(step), later], "all")
        assert composite.authenticate(request(method="X")) == step
        assert later.asked == 0

    @pytest.mark.parametrize("mode", ["first", "all"])
    def test_asynchronous_providers(self, mode: Any) -> None:
        async def main() -> None:
            slow_abstain, slow_accept = Fixed(None, slow=True), Fixed(ACCEPT_A, slow=True)
            composite = CompositeAuthenticator([slow_abstain, Fixed(None), slow_accept], mode)
            answer = composite.authenticate(request("x", b"y"))
            assert not isinstance(answer, AuthResult)
            assert await answer == ACCEPT_A
            refusing = CompositeAuthenticator([Fixed(None, slow=True), Fixed(REFUSE)], mode)
            assert await resolve(refusing.authenticate(request("x", b"y"))) == REFUSE
            nobody = CompositeAuthenticator([Fixed(None, slow=True)], mode)
            result = await resolve(nobody.authenticate(request("x", b"y")))
            assert result.reason_code == RC.BAD_USER_NAME_OR_PASSWORD

        run(main())

    def test_plain_authenticators_always_decide(self) -> None:
        later = Fixed(ACCEPT_A)
        composite = CompositeAuthenticator([AnonymousPolicy(False), later], "first")
        answer = composite.authenticate(request("x", b"y"))
        assert isinstance(answer, AuthResult)
        assert answer.reason_code == RC.NOT_AUTHORIZED
        assert later.asked == 0

    def test_password_file_abstains_for_users_it_does_not_know(self) -> None:
        async def main() -> None:
            passwords = make()
            other = Fixed(ACCEPT_B)
            composite = CompositeAuthenticator([passwords, other], "first")
            # bob is in the file: the file decides, wrong password included
            ok = await resolve(composite.authenticate(request("bob", b"bob-pw")))
            assert ok == AuthResult(RC.SUCCESS, username="bob")
            wrong = await resolve(composite.authenticate(request("bob", b"x")))
            assert wrong.reason_code == RC.BAD_USER_NAME_OR_PASSWORD
            assert other.asked == 0
            # carol is not: the next provider decides; so are anonymous clients and methods
            assert composite.authenticate(request("carol", b"x")) == ACCEPT_B
            assert composite.authenticate(request()) == ACCEPT_B
            assert composite.authenticate(request("bob", None, method="M")) == ACCEPT_B
            assert other.asked == 3
            passwords.close()

        run(main())

    def test_bad_mode(self) -> None:
        with pytest.raises(ValueError, match="mode"):
            CompositeAuthenticator([], "any")  # type: ignore[arg-type]
