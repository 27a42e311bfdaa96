"""The reply cache's request digests: hashed lazily (a new key is claimed without hashing, so a large
request is hashed beside its forward), at most once, the bytes dropped after; a repeat of a key with
the same bytes joins the first, with other bytes is refused, whether or not the first was hashed yet."""
import pytest

from coinfer.server.replies import Digest, ReplyCache, ReplyConflict


def test_a_new_key_is_claimed_without_hashing_and_the_bytes_go_once_hashed():
    cache, digest = ReplyCache(), Digest(b"x" * 100_000)
    future, owner = cache.claim(("a", 1), digest)
    assert owner and digest._value is None and digest._data is not None
    first = digest.value()
    assert digest._data is None and digest.value() == first and len(first) == 16


@pytest.mark.parametrize("hashed_first", [True, False])
def test_a_repeat_joins_with_the_same_bytes_and_is_refused_with_others(hashed_first):
    cache = ReplyCache()
    original = Digest(b"payload")
    future, owner = cache.claim(("a", 1), original)
    if hashed_first:
        original.value()
    joined, again = cache.claim(("a", 1), Digest(b"payload"))
    assert owner and not again and joined is future
    with pytest.raises(ReplyConflict):
        cache.claim(("a", 1), Digest(b"other payload"))
    future.set_result("answer")
    answered, again = cache.claim(("a", 1), Digest(b"payload"))
    assert not again and answered.result() == "answer" and cache.hits == 2
    assert cache.claim(("a", 2), Digest(b"other payload"))[1]  # another epoch is another request
