"""Numbers clients send (budget limits, outcome values, corrections), checked before any use.

`Decimal("1e999999999")` is a valid, finite number, and printing or adding it builds a
billion-digit string: one such value in a request body used to take gigabytes and stall the
event loop. So a client's number is taken only in plain notation (`"-12.50"`, never `1e3`),
with at most INTEGER_DIGITS digits before the point and FRACTION_DIGITS after. The two add up
to the 28 significant digits of Decimal's default context, so every accepted amount takes part
in arithmetic exactly, and the fraction is finer than any per-token price times a currency
rate. JSON integers are taken within the same range; JSON floats never (money is not binary).
"""

from __future__ import annotations

import re
from decimal import Decimal

from .errors import RequestError

INTEGER_DIGITS = 12  # below a trillion, of money or of tokens
FRACTION_DIGITS = 16
LARGEST = 10**INTEGER_DIGITS - 1
_PLAIN = re.compile(rf"-?[0-9]{{1,{INTEGER_DIGITS}}}(?:\.[0-9]{{1,{FRACTION_DIGITS}}})?")


def amount(value: object, name: str, *, negative: bool = False,
           floats: bool = False) -> Decimal:
    """`value` (a decimal string, a JSON integer, or a Decimal read from TOML) as a Decimal;
    RequestError naming `name`.

    `floats`: a JSON float too, by its shortest decimal form (where an API defines the field
    as a JSON number, like OpenRouter's max_price), and under the same rule.
    """
    if floats and isinstance(value, float):
        value = repr(value)
    number = None
    if ((isinstance(value, str) and _PLAIN.fullmatch(value))
            or (isinstance(value, int) and not isinstance(value, bool) and abs(value) <= LARGEST)):
        number = Decimal(value)
    elif isinstance(value, Decimal) and value.is_finite() and value.adjusted() < INTEGER_DIGITS \
            and int(value.as_tuple().exponent) >= -FRACTION_DIGITS:  # the config's, from TOML
        number = value
    if number is None or (number.is_signed() and not negative):  # "-0" is signed too
        kind = "a decimal string" if negative else "a non-negative decimal string"
        raise RequestError(
            f"{name} must be {kind} like \"12.50\" in plain notation (no exponent), with at "
            f"most {INTEGER_DIGITS} digits before the point and {FRACTION_DIGITS} after")
    return number


def whole_number(value: object, name: str) -> int:
    """`value` as an int within ±LARGEST: a JSON integer, not a float or a bool."""
    if not isinstance(value, int) or isinstance(value, bool) or abs(value) > LARGEST:
        raise RequestError(f"{name} must be an integer of at most {INTEGER_DIGITS} digits "
                           "(a difference may be negative)")
    return value
