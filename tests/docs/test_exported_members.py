"""The public API: the names users import exist, and nothing private leaks into ``__all__``."""

from __future__ import annotations

import supervisor
import terraphim_actors
import terraphim_actors.errors

REQUIRED = {
    "Agent",
    "AgentRef",
    "AgentId",
    "MessageId",
    "Priority",
    "MessageOptions",
    "Envelope",
    "MessageKind",
    "cast",
    "call",
    "info",
    "Mailbox",
    "MailboxConfig",
    "OverflowPolicy",
    "MailboxStats",
    "MessageSystem",
    "MessageSystemConfig",
    "open_message_system",
    "SystemStats",
    "DeadLetter",
    "Down",
    "Directive",
    "register_payload",
    "Instrument",
    "RateLimit",
    "TokenBudget",
    "ConcurrencyLimit",
}

REQUIRED_ERRORS = {
    "MessagingError",
    "AgentNotFound",
    "MailboxFull",
    "MessageTimeout",
    "CallTimeout",
    "HandlerTimeout",
    "CallFailed",
    "AgentStopped",
    "DuplicateAgent",
    "InvalidConfig",
    "WrongThread",
    "UnencodablePayload",
    "JournalError",
    "NodeDown",
    "RemoteError",
}

REQUIRED_SUPERVISOR = {
    "Supervisor",
    "ChildSpec",
    "RestartStrategy",
    "RestartType",
    "Shutdown",
    "RestartIntensityExceeded",
    "EscalatedFailure",
    "FinalExit",
    "SupervisorStats",
    "ChildInfo",
}


def test_required_names_are_exported() -> None:
    """Every name the issue promises is in ``terraphim_actors.__all__`` and importable."""
    assert set(terraphim_actors.__all__) >= REQUIRED
    for name in terraphim_actors.__all__:
        assert getattr(terraphim_actors, name) is not None


def test_required_supervisor_names_are_exported() -> None:
    """Every name the supervision issue promises is in ``supervisor.__all__``."""
    assert set(supervisor.__all__) >= REQUIRED_SUPERVISOR
    assert {"RestartType", "RestartStrategy", "Supervisor"} <= set(terraphim_actors.__all__)


def test_required_errors_are_exported() -> None:
    """Every promised error is in ``terraphim_actors.errors.__all__``."""
    assert set(terraphim_actors.errors.__all__) >= REQUIRED_ERRORS


def test_exports_are_public_and_documented() -> None:
    """Exported names are public, and every exported class or function has a docstring."""
    for module in (terraphim_actors, terraphim_actors.errors, supervisor):
        for name in module.__all__:
            assert not name.startswith("_")
            value = getattr(module, name)
            if callable(value):
                assert value.__doc__, f"{module.__name__}.{name} has no docstring"


def test_supervisor_does_not_import_terraphim_actors() -> None:
    """``supervisor`` is standalone: nothing in it imports ``terraphim_actors``."""
    from pathlib import Path

    package = Path(supervisor.__file__).parent
    for source in package.rglob("*.py"):
        assert "terraphim_actors" not in source.read_text(), source
