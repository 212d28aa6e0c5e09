"""Advisors: pure functions over a ModelCard and hardware ceilings."""
