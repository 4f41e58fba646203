"""The protocols a lower layer names in place of a higher type stay what they stand for: the
same members, with the same signatures, so that code typed by the protocol is checked as code
on the class itself (``down.ref`` as an ``AgentRef``)."""

from __future__ import annotations

import inspect
from typing import Any

import trio

from terraphim_actors import Agent, AgentRef, Context, Down, MessageSystem
from terraphim_actors._core.protocols import Ref

#: AgentRef's member that the router asks (where a routed message goes), not users.
REF_INTERNALS = {"destination"}


def protocol_members(protocol: type) -> set[str]:
    """The members a protocol class declares itself (methods, properties, annotations)."""
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {name for name in vars(protocol) if not name.startswith("_")}
    return names


def signature(member: Any) -> inspect.Signature:
    """A method's signature, or a property's getter's, annotations as written."""
    if isinstance(member, property):
        assert member.fget is not None
        member = member.fget
    return inspect.signature(member)


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
