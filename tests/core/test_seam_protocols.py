"""The protocols a lower layer names in place of a higher type stay what they stand for: the
same members, with the same signatures, so that code typed by the protocol is checked as code
on the class itself (``ctx.system`` as a ``MessageSystem``, ``down.ref`` as an ``AgentRef``, a
custom router as a ``MessageRouter``)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any, get_type_hints

import trio

from terraphim_actors import (
    Agent,
    AgentRef,
    Context,
    Down,
    MessageRouter,
    MessageSystem,
    RouterConfig,
)
from terraphim_actors._behaviour.system_api import SystemApi
from terraphim_actors._core.protocols import Ref
from terraphim_actors._routing.router import CustomRoute

README = Path(__file__).resolve().parents[2] / "README.md"

#: MessageSystem's members without a leading underscore that are the package's own wiring (its
#: agents' cells, delivery and shutdown call them), not what users call: no README mentions
#: them, and ``ctx.system`` does not offer them.
SYSTEM_INTERNALS = {
    "config",
    "nursery",
    "thread_id",
    "timers",
    "clock",
    "current_time",
    "closing",
    "instruments",
    "headers_from",
    "pending_calls",
    "registry",
    "forget_pool",
    "registered_id",
    "live_cell",
    "live_cells",
    "is_subscriber",
    "describe",
    "file_dead_letter",
    "publish",
    "starts_seen",
    "stops_seen",
    "register",
    "count_crash",
    "count_restart",
    "has_stopped",
    "retire",
    "cut_shutdown_short",
    "over_by",
}

#: AgentRef's member that the router asks (where a routed message goes), not users.
REF_INTERNALS = {"destination"}


def protocol_members(protocol: type) -> set[str]:
    """The members a protocol class declares itself (methods, properties, annotations)."""
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {name for name in vars(protocol) if not name.startswith("_")}
    return names


def public_members(cls: type, instance: object) -> set[str]:
    """A class's public members: its methods and properties, and the attributes an instance
    sets (slots or ``__init__``)."""
    names = {name for name in dir(cls) if not name.startswith("_")}
    names |= {name for name in dir(instance) if not name.startswith("_")}
    return names


def signature(member: Any) -> inspect.Signature:
    """A method's signature, or a property's getter's, annotations as written."""
    if isinstance(member, property):
        assert member.fget is not None
        member = member.fget
    return inspect.signature(member)


class TestSystemApi:
    async def test_the_protocol_is_the_systems_public_members(self, system: MessageSystem) -> None:
        public = public_members(MessageSystem, system)
        assert public >= SYSTEM_INTERNALS, "an internal member is gone: drop it from the list"
        assert protocol_members(SystemApi) == public - SYSTEM_INTERNALS

    def test_its_methods_have_the_systems_signatures(self) -> None:
        for name in protocol_members(SystemApi):
            declared = inspect.getattr_static(SystemApi, name)
            actual = inspect.getattr_static(MessageSystem, name, None)
            if isinstance(declared, property) and actual is None:
                continue  # an attribute set in __init__: its type is checked below
            assert signature(declared) == signature(actual), name

    async def test_its_attributes_hold_what_it_declares(self, system: MessageSystem) -> None:
        for name in protocol_members(SystemApi):
            if inspect.getattr_static(MessageSystem, name, None) is not None:
                continue
            declared = get_type_hints(inspect.getattr_static(SystemApi, name).fget)["return"]
            assert isinstance(getattr(system, name), declared), name

    def test_the_internal_members_are_not_documented(self) -> None:
        readme = README.read_text()
        documented = set(re.findall(r"system\.([a-z_]+)", readme))
        assert not SYSTEM_INTERNALS & documented

    async def test_a_handlers_system_is_the_message_system(self, system: MessageSystem) -> None:
        class Asks(Agent):
            async def handle_call(self, message: Any, ctx: Context) -> Any:
                return ctx.system

        ref = await system.spawn(Asks)
        assert await ref.call("system?") is system


class TestRef:
    def test_the_agent_refs_public_members_are_the_protocols(self) -> None:
        public = {name for name in [*dir(AgentRef), *AgentRef.__slots__] if name[0] != "_"}
        assert public >= REF_INTERNALS, "an internal member is gone: drop it from the list"
        assert protocol_members(Ref) == public - REF_INTERNALS

    def test_its_methods_have_the_refs_signatures(self) -> None:
        for name in protocol_members(Ref) - {"id"}:
            declared = inspect.getattr_static(Ref, name)
            actual = inspect.getattr_static(AgentRef, name)
            assert signature(declared) == signature(actual), name

    async def test_a_down_carries_the_agent_ref(self, system: MessageSystem) -> None:
        downs: list[Down] = []
        arrived = trio.Event()

        class Watches(Agent):
            async def handle_cast(self, message: Any, ctx: Context) -> None:
                ctx.monitor(message)

            async def handle_info(self, message: Any, ctx: Context) -> None:
                downs.append(message)
                arrived.set()

        watched = await system.spawn(Agent)
        watcher = await system.spawn(Watches)
        await watcher.cast(watched)
        await system.stop(watched)
        await arrived.wait()
        assert downs[0].ref == watched
        assert type(downs[0].ref) is AgentRef


class TestCustomRouter:
    def test_the_public_protocol_and_the_one_the_router_calls_take_the_same_arguments(
        self,
    ) -> None:
        public = inspect.signature(MessageRouter.route).parameters
        called = inspect.signature(CustomRoute.route).parameters
        assert [(p.name, p.kind) for p in public.values()] == [
            (p.name, p.kind) for p in called.values()
        ]

    def test_a_router_of_ones_own_is_both(self) -> None:
        class ByTopic:
            def route(self, envelope: Any, system: Any) -> list[AgentRef]:
                return [system.ref(envelope.payload)]

        router = ByTopic()
        assert isinstance(router, MessageRouter)
        assert isinstance(router, CustomRoute)
        assert RouterConfig(custom_router=router).custom_router is router
