"""Builds the library's compiled hot path, ``shared_cache/_hot_path.pyx`` (the memory-tier hit of
``get_with_cache_aside``, in C through Cython); everything else is declared in pyproject.toml.

The extension is optional: without a C compiler the build warns, with ``SHARED_CACHE_NO_EXTENSIONS=1``
set at install time it is not attempted, and either way the library installs as pure Python, where
``get_with_cache_aside`` is the Python one: the same behaviour, a slower memory-tier hit.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup


def extensions() -> list[Extension]:
    if os.environ.get("SHARED_CACHE_NO_EXTENSIONS", "") not in ("", "0"):  # as shared_cache/_implementation.py reads it
        return []
    from Cython.Build import cythonize  # a build requirement (pyproject.toml)

    built = list(cythonize([Extension("shared_cache._hot_path", ["shared_cache/_hot_path.pyx"])], quiet=True))
    for extension in built:
        extension.optional = True  # set after cythonize, which leaves it out of the extensions it makes
    return built


setup(ext_modules=extensions())
