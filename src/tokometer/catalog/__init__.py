"""What is known about models: vendor, vendor country, tokenizer family, and prices.

Prices (genai-prices' catalog, slow and large to load: bench/hot_path.py) are imported on
first use, so processes that only need vendors (the CLI, granian's supervisor) never load them.
"""

from typing import Any

from .vendors import VendorInfo, origin_of, vendor_of

__all__ = ["Priced", "Pricer", "VendorInfo", "origin_of", "vendor_of"]


def __getattr__(name: str) -> Any:
    if name in ("Priced", "Pricer"):
        from . import pricing

        return getattr(pricing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
