"""Tokens, users and per-project access (emlive.web.access)."""

from __future__ import annotations

import hmac

import pytest


@pytest.fixture
def access(db):
    from emlive.web import access

    from django.contrib.auth.models import User

    User.objects.all().delete()
    return access


def test_a_token_finds_its_user_and_only_a_hash_is_stored(access, db):
    alice = access.add_user("alice", projects=("p1",))
    token = access.create_token(alice)
    assert token.startswith("emlive_")
    assert access.user_for_token(token) == alice
    secret = token.rsplit("_", 1)[1]
    stored = db.models.ApiToken.objects.get(user=alice)
    assert secret not in stored.secret_sha256 and len(stored.secret_sha256) == 64
    assert stored.last_used_at is not None


@pytest.mark.parametrize("mangle", [lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"), lambda t: "", lambda t: "Bearer " + t,
                                    lambda t: t.replace("emlive_", "emlive-"), lambda t: "emlive_" + "0" * 16 + "_" + "x" * 43])
def test_wrong_or_malformed_tokens_find_nobody(access, mangle):
    token = access.create_token(access.add_user("bob"))
    assert access.user_for_token(mangle(token)) is None


def test_tokens_are_compared_in_constant_time(access, monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", spy)
    token = access.create_token(access.add_user("carol"))
    assert access.user_for_token(token) is not None
    assert access.user_for_token("emlive_" + "f" * 16 + "_" + "y" * 43) is None  # unknown key id: compared too
    assert len(calls) == 2


def test_inactive_users_tokens_stop_working(access):
    dave = access.add_user("dave")
    token = access.create_token(dave)
    dave.is_active = False
    dave.save()
    assert access.user_for_token(token) is None


def test_members_see_their_projects_and_staff_see_all(access, db, tmp_path, acquisition):
    s1 = db.store.get_or_create_session(tmp_path / "a" / "raw", tmp_path / "a" / "out", acquisition, project="p1")
    s2 = db.store.get_or_create_session(tmp_path / "b" / "raw", tmp_path / "b" / "out", acquisition, project="p2")
    member = access.add_user("erin", projects=("p1",))
    staff = access.add_user("frank", staff=True)
    from django.contrib.auth.models import AnonymousUser

    assert list(access.visible_sessions(member)) == [s1]
    assert set(access.visible_sessions(staff)) == {s1, s2}
    assert list(access.visible_sessions(AnonymousUser())) == []
    assert access.can_access_project(member, "p1") and not access.can_access_project(member, "p2")
    assert access.can_access_project(staff, "p2") and not access.can_access_project(AnonymousUser(), "p1")


def test_add_user_updates_and_sets_passwords(access):
    user = access.add_user("gina", password="s3cret-enough")
    assert user.check_password("s3cret-enough") and not user.is_staff
    again = access.add_user("gina", staff=True, projects=("p9",))
    assert again.pk == user.pk and again.is_staff and again.check_password("s3cret-enough")
    assert access.add_user("hank").has_usable_password() is False


@pytest.mark.parametrize("name", ["..", "a/b", "", ".hidden", "a..b", "x" * 201, "a b", "a%2fb", "é"])
def test_unsafe_names_are_refused(access, name):
    assert not access.valid_name(name)
    with pytest.raises(ValueError, match="user name"):
        access.add_user(name)


@pytest.mark.parametrize("name", ["p1", "Grid_3-2026.11", "a" * 200])
def test_safe_names_pass(access, name):
    assert access.valid_name(name)


def test_polling_with_a_token_does_not_write_on_every_request(access, assert_num_queries):
    token = access.create_token(access.add_user("ivy"))
    with assert_num_queries(2):  # found, and its last use recorded
        assert access.user_for_token(token) is not None
    with assert_num_queries(1):  # used again within LAST_USED_RESOLUTION: read only
        assert access.user_for_token(token) is not None
