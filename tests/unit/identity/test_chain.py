from capsuled.identity.base import Principal
from capsuled.identity.chain import LocalThenKeystone

LOCAL = Principal("admin", "admin", frozenset({"admin"}))
REMOTE = Principal("p", "u", frozenset({"member"}))


class Fixed:
    def __init__(self, token: str, who: Principal) -> None:
        self.token, self.who, self.asked = token, who, []  # type: ignore[var-annotated]

    def authenticate(self, token: str) -> Principal | None:
        self.asked.append(token)
        return self.who if token == self.token else None


def test_our_tokens_stay_local_and_the_rest_go_to_keystone() -> None:
    local, keystone = Fixed("cap_abc", LOCAL), Fixed("gAAAA-fernet", REMOTE)
    chain = LocalThenKeystone(local, keystone)
    assert chain.authenticate("cap_abc") == LOCAL
    assert chain.authenticate("gAAAA-fernet") == REMOTE
    assert chain.authenticate("cap_unknown") is None
    assert keystone.asked == ["gAAAA-fernet"]  # a cap_ token never reaches Keystone
    assert local.asked == ["cap_abc", "cap_unknown"]
