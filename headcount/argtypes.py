"""Argument types the command line shares: each turns a flag's text into a value or says, in
argparse's words, what was wrong with it."""

from __future__ import annotations

import argparse


def non_negative(text: str) -> int:
    """A whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} cannot be negative")
    return value


def at_least_one(text: str) -> int:
    """A whole number, 1 or more."""
    value = non_negative(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small: it must be at least 1")
    return value


def positive_seconds(text: str) -> float:
    """A number of seconds above 0 (and at most a day)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 86_400:
        raise argparse.ArgumentTypeError(f"{text} must be above 0 s and at most 86400 s")
    return value
