"""Which ``get_with_cache_aside`` the package exports.

The compiled one (``_hot_path``, its memory-tier hit in C) where it was built at install time; the
Python one (``_cache_aside``) where it was not (no C compiler), or when ``SHARED_CACHE_NO_EXTENSIONS``
is set to anything but empty or ``0`` (to debug or profile the Python one). They behave the same;
tests/test_hot_path.py runs the hit's behaviours against both. ``get_with_cache_aside.__module__``
says which one a process runs.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ._cache_aside import get_with_cache_aside as python_get_with_cache_aside

if TYPE_CHECKING:  # both have this signature; type checkers see the Python one's
    get_with_cache_aside = python_get_with_cache_aside
elif os.environ.get("SHARED_CACHE_NO_EXTENSIONS", "") not in ("", "0"):
    get_with_cache_aside = python_get_with_cache_aside
else:
    try:
        from ._hot_path import get_with_cache_aside
    except ImportError:  # not built on this machine
        get_with_cache_aside = python_get_with_cache_aside


def compiled() -> bool:
    """True when the exported ``get_with_cache_aside`` is the compiled one."""
    return get_with_cache_aside is not python_get_with_cache_aside
