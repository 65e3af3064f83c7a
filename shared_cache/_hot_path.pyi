# The compiled twin of _cache_aside.get_with_cache_aside: the same signature, declared there once.
from ._cache_aside import get_with_cache_aside as get_with_cache_aside

def perf_counter() -> float: ...
