"""Errors a user can cause. The CLI prints them as one line and exits with status 2."""


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and how to fix it (one line)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def check(condition: bool, message: str) -> None:
    """Raise :class:`UserError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise UserError(message)


def check_positive(name: str, value, strict: bool = True) -> None:
    ok = value > 0 if strict else value >= 0
    check(ok, f"{name} must be {'> 0' if strict else '>= 0'}, got {value}; pass a {'positive' if strict else 'non-negative'} number")


def check_open_unit(name: str, value) -> None:
    check(0 < value < 1, f"{name} must lie strictly between 0 and 1, got {value}")
