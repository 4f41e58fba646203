"""What a system's delivery configuration says, and each message's options filled in from it.

A message leaves to the system whatever its options do not say (guarantee, retries, delay).
They are filled in once, when the message is accepted, so that everything after reads them
from the message alone; filled-in options are shared and cached, because ``attrs.evolve``
with its validators costs more than a send.
"""

from __future__ import annotations

import attrs

from .._core.checks import check_count, check_factor, check_instance, check_seconds, validator
from .._core.messages import DeliveryGuarantee, MessageOptions, Priority, never_expiring
from .._core.messages import options_for as shared_options
from .._primitives.dedup import DedupWindow

__all__ = ["DeliveryConfig", "FilledOptions"]

#: Distinct per-message options kept filled in; past that the cache starts afresh.
_RESOLVED_KEPT = 1024


@attrs.frozen(kw_only=True)
class DeliveryConfig:
    """How hard a system tries to deliver messages; ``MessageOptions`` overrides it per message.

    Attributes:
        guarantee: the default guarantee (at-least-once, as in the original crate).
        max_retries: redeliveries after the first try: 3 means at most 4 handler runs.
        retry_delay: seconds before the first redelivery.
        retry_backoff_multiplier: the n-th redelivery waits
            ``retry_delay * retry_backoff_multiplier ** (n - 1)`` seconds...
        max_retry_delay: ...but never more than this...
        jitter: ...plus a random fraction up to this of that wait (0 turns it off), so that
            retries of many messages do not arrive in lockstep.
        dedup_window: how long an exactly-once recipient remembers what it handled.
        seed: seeds the jitter, for runs that must repeat exactly.

    Times are at most ``MAX_SECONDS`` (10**9 s), the multiplier and the jitter at most
    ``MAX_FACTOR`` (1000), counts at most ``MAX_COUNT``: whatever is accepted keeps every
    retry's due time a finite number.
    """

    guarantee: DeliveryGuarantee = attrs.field(
        default=DeliveryGuarantee.AT_LEAST_ONCE,
        validator=validator(check_instance, DeliveryGuarantee),
    )
    max_retries: int = attrs.field(default=3, validator=validator(check_count, minimum=0))
    retry_delay: float = attrs.field(
        default=0.1, validator=validator(check_seconds, allow_zero=True)
    )
    retry_backoff_multiplier: float = attrs.field(
        default=2.0, validator=validator(check_factor, minimum=1)
    )
    max_retry_delay: float = attrs.field(default=30.0, validator=validator(check_seconds))
    jitter: float = attrs.field(default=0.1, validator=validator(check_factor, minimum=0))
    dedup_window: DedupWindow = attrs.field(
        factory=DedupWindow, validator=validator(check_instance, DedupWindow)
    )
    seed: int | None = attrs.field(
        default=None, validator=validator(check_count, minimum=0, optional=True)
    )


class FilledOptions:
    """Message options with what they leave to the system filled in from a ``DeliveryConfig``."""

    __slots__ = ("_config", "_resolved", "defaults", "notices")

    def __init__(self, config: DeliveryConfig) -> None:
        self._config = config
        #: What a message sent without options carries, indexed by priority.
        self.defaults: tuple[MessageOptions, ...] = tuple(
            self._filled(MessageOptions(priority=priority)) for priority in Priority
        )
        #: Options given per message, filled in (a sender usually reuses one options object).
        self._resolved: dict[MessageOptions, MessageOptions] = {}
        #: System notifications, indexed by priority: never retried, whatever the system's
        #: default, and never expired (a ``Down`` must reach a monitor, however busy it was).
        self.notices: tuple[MessageOptions, ...] = tuple(
            never_expiring(attrs.evolve(options, guarantee=DeliveryGuarantee.AT_MOST_ONCE))
            for options in self.defaults
        )

    def resolve(self, options: MessageOptions) -> MessageOptions:
        """``options`` with what it leaves to the system filled in from the configuration."""
        if options is shared_options(options.priority):
            return self.defaults[options.priority]
        if options.guarantee is None or options.max_retries is None or options.retry_delay is None:
            filled = self._resolved.get(options)
            if filled is None:
                if len(self._resolved) >= _RESOLVED_KEPT:
                    self._resolved.clear()
                filled = self._resolved[options] = self._filled(options)
            return filled
        return options

    def _filled(self, options: MessageOptions) -> MessageOptions:
        config = self._config
        return attrs.evolve(
            options,
            guarantee=config.guarantee if options.guarantee is None else options.guarantee,
            max_retries=config.max_retries if options.max_retries is None else options.max_retries,
            retry_delay=config.retry_delay if options.retry_delay is None else options.retry_delay,
        )
