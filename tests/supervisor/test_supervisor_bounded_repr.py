"""The bounded repr that error messages and log records quote values through."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from supervised import Unprintable

from supervisor import (
    ChildNotFound,
    ChildSpec,
    DuplicateChild,
    DynamicSupervisor,
    InvalidSpec,
    Supervisor,
)
from supervisor._bounded_repr import REPR_LIMIT, bounded_repr, shorten

#: A 10 MB prompt: what must never be quoted whole.
HUGE_PROMPT = "x" * 10_000_000


class TestBoundedRepr:
    @pytest.mark.parametrize("value", ["short", 42, None, (1, "a"), {"k": [1, 2]}, 1.5])
    def test_a_short_value_is_its_plain_repr(self, value: object) -> None:
        """Within the bound, nothing changes: what a reader expects to see."""
        assert bounded_repr(value) == repr(value)

    def test_a_long_string_is_cut_at_the_bound(self) -> None:
        """A 10 MB prompt shows as its first characters, at most ``REPR_LIMIT`` of them."""
        text = bounded_repr(HUGE_PROMPT)
        assert len(text) <= REPR_LIMIT
        assert text.startswith("'xxx")

    def test_an_object_with_a_long_repr_is_cut_with_an_ellipsis(self) -> None:
        """A repr longer than the bound ends in ``...`` at exactly the bound."""

        class Wordy:
            def __repr__(self) -> str:
                return "w" * 1000

        assert bounded_repr(Wordy()) == "w" * (REPR_LIMIT - 3) + "..."

    def test_a_repr_that_raises_says_unprintable_and_the_type(self) -> None:
        """A raising ``__repr__`` never escapes: the type's name stands for the value."""
        assert bounded_repr(Unprintable()) == "<unprintable Unprintable>"

    def test_an_unprintable_item_of_a_container_spoils_only_itself(self) -> None:
        """Inside a list or dict, only the unprintable item is replaced."""
        assert bounded_repr([1, Unprintable()]) == "[1, <unprintable Unprintable>]"
        assert bounded_repr({"a": Unprintable()}) == "{'a': <unprintable Unprintable>}"

    def test_an_int_too_long_to_print_is_unprintable(self) -> None:
        """Python refuses to print ints of more than 4300 digits: that is not our error."""
        assert bounded_repr(10**5000) == "<unprintable int>"

    def test_an_exception_with_a_huge_message_is_cut(self) -> None:
        """A user's error quoting the whole prompt is cut like any other value."""
        text = bounded_repr(ValueError(HUGE_PROMPT))
        assert text.startswith("ValueError('xxx")
        assert len(text) <= REPR_LIMIT

    def test_a_smaller_limit_can_be_asked_for(self) -> None:
        """``limit`` bounds the text instead of ``REPR_LIMIT``."""
        assert len(bounded_repr(HUGE_PROMPT, limit=20)) <= 20

    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
            lambda children: st.lists(children) | st.dictionaries(st.text(), children),
        )
    )
    def test_any_value_gives_a_text_within_the_bound(self, value: Any) -> None:
        """Whatever the value, the text is at most ``REPR_LIMIT`` characters."""
        assert len(bounded_repr(value)) <= REPR_LIMIT


class TestShorten:
    def test_a_short_text_is_kept(self) -> None:
        """Within the limit, the text is unchanged."""
        assert shorten("detail", 10) == "detail"

    def test_a_long_text_ends_in_an_ellipsis_at_the_limit(self) -> None:
        """A longer text keeps its start and says it was cut."""
        assert shorten("abcdefghij", 6) == "abc..."


class UnprintableUnhashable(Unprintable):
    """A child id that is neither hashable nor printable."""

    __hash__ = None  # type: ignore[assignment]


#: A value with a repr of about 700,000 characters.
HUGE_VALUE = list(range(100_000))

#: The package's argument checks: each refuses the value it is given.
REFUSALS: dict[str, Callable[[Any], object]] = {
    "Supervisor(strategy=bad)": lambda v: Supervisor(strategy=v),
    "Supervisor(auto_shutdown=bad)": lambda v: Supervisor(auto_shutdown=v),
    "Supervisor(backoff=bad)": lambda v: Supervisor(backoff=v),
    "Supervisor(forget_ended=bad)": lambda v: Supervisor(forget_ended=v),
    "Supervisor(stop_concurrently=bad)": lambda v: Supervisor(stop_concurrently=v),
    "Supervisor([bad])": lambda v: Supervisor([v]),
    "DynamicSupervisor(bad)": lambda v: DynamicSupervisor(v),
    "ChildSpec(significant=bad)": lambda v: ChildSpec(id="a", start=_idle, significant=v),
}


async def _idle() -> None:
    await trio.sleep_forever()


class TestArgumentChecksQuoteBounded:
    """An argument check quotes the value it refuses through the bounded repr: a raw repr
    that raises replaced the InvalidSpec with its own error, and a huge one made a huge
    message."""

    @pytest.mark.parametrize("value", [Unprintable(), HUGE_VALUE], ids=["unprintable", "huge"])
    @pytest.mark.parametrize("check", list(REFUSALS))
    def test_a_refused_value(self, check: str, value: Any) -> None:
        with pytest.raises(InvalidSpec) as caught:
            REFUSALS[check](value)
        assert len(str(caught.value)) <= 2 * REPR_LIMIT

    def test_an_unhashable_child_id(self) -> None:
        with pytest.raises(InvalidSpec, match="unprintable UnprintableUnhashable"):
            ChildSpec(id=UnprintableUnhashable(), start=_idle)

    @pytest.mark.parametrize("value", [Unprintable(), "x" * 100_000], ids=["unprintable", "huge"])
    async def test_an_unknown_child_id(self, value: Any) -> None:
        async with Supervisor() as supervisor:
            with pytest.raises(ChildNotFound) as caught:
                await supervisor.terminate_child(value)
            assert len(str(caught.value)) <= 2 * REPR_LIMIT

    @pytest.mark.parametrize("value", [Unprintable(), "x" * 100_000], ids=["unprintable", "huge"])
    async def test_a_duplicate_child_id(self, value: Any) -> None:
        async with Supervisor() as supervisor:
            await supervisor.start_child(ChildSpec(id=value, start=_idle))
            with pytest.raises(DuplicateChild) as caught:
                await supervisor.start_child(ChildSpec(id=value, start=_idle))
            assert len(str(caught.value)) <= 2 * REPR_LIMIT
