"""What is known about models: vendor, vendor country, tokenizer family, and prices."""

from .pricing import Priced, Pricer
from .vendors import VendorInfo, origin_of, vendor_of

__all__ = ["Priced", "Pricer", "VendorInfo", "origin_of", "vendor_of"]
