"""Admission budgets: what an agent (or a pool) may take in per period or at once, as plain
objects that are given the time (``now``) by their caller and never read a clock, so that each
is unit-tested without Trio. The circuit breaker (``_primitives.circuit``) is the other policy
an endpoint consults; ``gate.AdmissionGate`` puts the two together."""

from .budget import Budget, BudgetUsage
from .budgets import AdmissionStats, Budgets, budgets_from
from .concurrency import ConcurrencyLimit
from .gate import AdmissionGate
from .rate import RateLimit
from .tokens import TokenBudget

__all__ = [
    "AdmissionGate",
    "AdmissionStats",
    "Budget",
    "BudgetUsage",
    "Budgets",
    "ConcurrencyLimit",
    "RateLimit",
    "TokenBudget",
    "budgets_from",
]
