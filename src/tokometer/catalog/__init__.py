"""What is known about models: vendor, vendor country, tokenizer family, and prices."""

from .pricing import Priced, Pricer
from .vendors import VendorInfo, vendor_of

__all__ = ["Priced", "Pricer", "VendorInfo", "vendor_of"]
