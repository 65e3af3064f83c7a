"""``shared-cache stats`` as text: the data ``collect_stats`` returns, as sections and tables."""

from __future__ import annotations

from typing import Any

from .render import indented, ms, parked, plural, ratio, size, table


def render_stats(data: dict[str, Any]) -> str:
    sections = [
        reads_section(data["cache"], data["prefix"]),
        processes_section(data["processes"]),
        listener_section(data["listener"]),
        redis_section(data["redis"], data["dead_letters"]),
        tenant_reads_section(data["cache"]),
    ]
    if data["tenants"] is not None:
        sections.append(tenant_keys_section(data["tenants"]))
    return "\n\n".join("\n".join(lines) for lines in sections)


def reads_section(cache: dict[str, Any], prefix: str) -> list[str]:
    errors = ", ".join(f"{k} {v}" for k, v in cache["errors"].items())
    out = [
        f"Cache reads: {plural(cache['processes'], 'process')} reported in the last minute (prefix {prefix})",
        f"  {cache['hits']} hits, {cache['misses']} misses, hit ratio {ratio(cache['hit_ratio'])}"
        + (f"; errors: {errors}" if errors else ""),
    ]
    rows: list[list[Any]] = []
    for data_type, row in cache["by_type"].items():
        rows.append([data_type, "all", sum(row["hits"].values()), row["misses"], ratio(row["hit_ratio"]), "", ""])
        for tier in sorted({*row["hits"], *row["latency_ms"]}):
            latency = row["latency_ms"].get(tier)
            p50, p99 = (ms(latency["p50"]), ms(latency["p99"])) if latency else ("-", "-")
            rows.append(["", tier, row["hits"].get(tier, "-"), "", "", p50, p99])
    if rows:
        headers = ["DATA TYPE", "TIER", "HITS", "MISSES", "HIT RATIO", "P50 MS", "P99 MS"]
        out += indented(table(headers, rows, right={2, 3, 4, 5, 6}))
        out.append("  (latency: the worst p50/p99 over processes; a miss is timed under its source, db or generated;")
        out.append("   memory-tier hits are timed one in sixteen)")
    return out


def processes_section(processes: list[dict[str, Any]]) -> list[str]:
    rows = []
    for p in processes:
        memory, sub = p["memory"] or {}, p["subscriber"] or {}
        prop, commit = sub.get("propagation_ms") or {}, sub.get("commit_to_evict_ms") or {}
        rows.append(
            [
                p["origin"],
                f"{p['age_s']:.0f}s",
                memory.get("entries", "-"),
                size(memory["bytes"]) if "bytes" in memory else "-",
                f"{ms(prop['p50'])} / {ms(prop['p99'])}" if prop and sub.get("events") else "-",
                f"{ms(commit['p50'])} / {ms(commit['p99'])}" if commit.get("count") else "-",
                sub.get("events", "-"),
            ]
        )
    if not rows:
        return ["Processes", "  none: no process with a memory tier reported in the last minute"]
    headers = ["ORIGIN", "AGE", "MEM ENTRIES", "MEM BYTES", "PROPAGATION P50/P99 MS", "COMMIT-TO-EVICT", "EVENTS"]
    return ["Processes", *indented(table(headers, rows, right={1, 2, 3, 6}))]


def listener_section(listener: dict[str, Any] | None) -> list[str]:
    if listener is None:
        return ["Listener: no report in the last minute (is `python -m worker` running?)"]
    counters = sorted(listener["stats"].items())
    out = [
        f"Listener (report {listener['age_s']:.0f} s old)",
        "  " + ("  ".join(f"{k} {v}" for k, v in counters) or "no events yet"),
    ]
    rows = [
        [
            s.get("name", "?"),
            "yes" if s.get("durable") else "no",
            s.get("received", "-"),
            size(s["slot_lag_bytes"]) if isinstance(s.get("slot_lag_bytes"), int) else "-",
        ]
        for s in listener["sources"]
    ]
    if rows:
        out += indented(table(["SOURCE", "DURABLE", "RECEIVED", "SLOT LAG"], rows, right={2, 3}))
    return out


def redis_section(redis: dict[str, Any], dead: dict[str, Any]) -> list[str]:
    maxmemory = f"of {size(redis['maxmemory'])}" if redis["maxmemory"] else "(no maxmemory)"
    return [
        f"Redis: {size(redis['used_memory'])} used {maxmemory}, policy {redis['maxmemory_policy']},"
        f" {plural(redis['keys'], 'key')}",
        f"Dead letters: {dead['problem']}"
        if dead.get("problem")
        else f"Dead letters: {dead['waiting']} waiting in {dead['key']}" + parked(dead["parked"]),
    ]


def tenant_reads_section(cache: dict[str, Any]) -> list[str]:
    rows = cache["by_tenant"]
    if not rows:
        return ["Reads per tenant: none reported in the last minute"]
    shown = f"the {len(rows)} busiest of {cache['tenants_reported']}" if len(rows) < cache["tenants_reported"] else ""
    head = f"Reads per tenant ({shown + ', ' if shown else ''}busiest first)"
    cells = [
        [t["tenant"], t["hits"], t["misses"], ratio(t["hit_ratio"]), ms(t["p99_ms"]), t["processes"]] for t in rows
    ]
    headers = ["TENANT", "HITS", "MISSES", "HIT RATIO", "P99 MS", "PROCESSES"]
    return [
        head,
        *indented(table(headers, cells, right={1, 2, 3, 4, 5})),
        "  (each process reports its own busiest tenants: hits and misses add up over the processes that",
        "   reported the tenant; p99: the highest of those processes' p99s)",
    ]


def tenant_keys_section(tenants: dict[str, Any]) -> list[str]:
    out = [
        f"Keys per tenant (SCAN, up to ~{tenants['max_scan']} keys walked per tenant;"
        f" the worker knows {plural(tenants['known'], 'tenant')})"
    ]
    rows = [
        [
            t["tenant"],
            f"{t['entries']}" + ("" if t["complete"] else "+"),
            t["bookkeeping_keys"],
            ", ".join(f"{k} {v}" for k, v in t["by_type"].items()) or "-",
        ]
        for t in tenants["rows"]
    ]
    if not rows:
        return [*out, "  none"]
    out += indented(table(["TENANT", "ENTRIES", "OTHER KEYS", "BY TYPE"], rows, right={1, 2}))
    if any(not t["complete"] for t in tenants["rows"]):
        out.append("  (+: the scan stopped at --max-scan; there may be more)")
    return out
