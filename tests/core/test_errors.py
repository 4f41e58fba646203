"""The error hierarchy: one base class, and the closest builtin for existing except clauses."""

from __future__ import annotations

import pytest
import trio

from terraphim_actors import errors
from terraphim_actors.errors import (
    AgentNotFound,
    CallFailed,
    CallTimeout,
    DuplicateAgent,
    HandlerTimeout,
    InvalidConfig,
    MailboxFull,
    MessageTimeout,
    MessagingError,
    SystemClosed,
    UnhandledMessage,
    WrongThread,
)

ERROR_NAMES = sorted(name for name in errors.__all__ if name != "MessagingError")


class TestHierarchy:
    @pytest.mark.parametrize("name", ERROR_NAMES)
    def test_every_error_is_a_messaging_error(self, name: str) -> None:
        """One ``except MessagingError`` catches every error the library raises."""
        error_type = getattr(errors, name)
        assert issubclass(error_type, MessagingError)
        with pytest.raises(MessagingError):
            raise error_type("boom")

    def test_messaging_error_is_an_exception(self) -> None:
        """The base class is an ordinary Exception, not a BaseException."""
        assert issubclass(MessagingError, Exception)

    def test_agent_not_found_is_a_lookup_error(self) -> None:
        """``except LookupError`` catches AgentNotFound."""
        with pytest.raises(LookupError):
            raise AgentNotFound("nobody")

    @pytest.mark.parametrize("error_type", [MessageTimeout, CallTimeout, HandlerTimeout])
    def test_timeouts_are_timeout_errors(self, error_type: type[MessagingError]) -> None:
        """``except TimeoutError`` catches MessageTimeout, CallTimeout and HandlerTimeout."""
        with pytest.raises(TimeoutError):
            raise error_type("too slow")

    @pytest.mark.parametrize("error_type", [InvalidConfig, DuplicateAgent])
    def test_bad_values_are_value_errors(self, error_type: type[MessagingError]) -> None:
        """``except ValueError`` catches InvalidConfig and DuplicateAgent."""
        with pytest.raises(ValueError, match="bad value"):
            raise error_type("bad value")

    def test_mailbox_full_is_would_block(self) -> None:
        """``except trio.WouldBlock`` catches MailboxFull, as for Trio's own ``*_nowait``."""
        with pytest.raises(trio.WouldBlock):
            raise MailboxFull("full")

    def test_unhandled_message_is_a_call_failure(self) -> None:
        """``except CallFailed`` also catches a call that the callee does not handle."""
        with pytest.raises(CallFailed):
            raise UnhandledMessage("no handle_call")

    def test_system_closed_is_a_runtime_error(self) -> None:
        """``except RuntimeError`` catches SystemClosed."""
        with pytest.raises(RuntimeError):
            raise SystemClosed("shut down")

    def test_wrong_thread_is_a_runtime_error(self) -> None:
        """``except RuntimeError`` catches WrongThread, as it catches Trio's own refusal of a
        call from outside its thread."""
        with pytest.raises(RuntimeError):
            raise WrongThread("elsewhere")

    def test_all_lists_only_errors_defined_here(self) -> None:
        """Every name in ``errors.__all__`` is an exception class of this module."""
        for name in errors.__all__:
            error_type = getattr(errors, name)
            assert isinstance(error_type, type)
            assert issubclass(error_type, BaseException)
            assert error_type.__module__ == errors.__name__
