"""The package exports exactly its public names, and importing it has no side effects."""

from __future__ import annotations

import subprocess
import sys
from types import ModuleType

import tokometer


def test_all_matches_what_the_package_exposes():
    public = {n for n, v in vars(tokometer).items()
              if not n.startswith("_") and not isinstance(v, ModuleType)}
    assert set(tokometer.__all__) == public | {"create_app"}
    assert all(getattr(tokometer, name) is not None for name in tokometer.__all__)


def test_import_starts_nothing():
    code = ("import threading, tokometer; import sys; "
            "assert threading.active_count() == 1, threading.enumerate(); "
            "assert not {'granian', 'llama_cpp', 'pyreqwest', 'genai_prices'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
