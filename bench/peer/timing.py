"""Timing helpers both sides of a peer benchmark import (stdlib only: the kzoo venv and the FuxiCTR venv
both run this file): CPU pinning, and the steady-state window of a list of timed train steps."""

from __future__ import annotations

import os


def pin_cpus(n: int) -> list[int]:
    """Pin this process (and its children) to the first `n` CPUs it may use; returns them."""
    if hasattr(os, "sched_setaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, allowed[:max(1, n)])
        return sorted(os.sched_getaffinity(0))
    return []


def steady_window(steps: list, warmup: int, timed: int, batch_size: int) -> dict:
    """Rows / seconds of the full-batch steps warmup+1 .. warmup+timed of the first epoch, timed from the
    end of step `warmup` to the end of the last one. `steps`: (epoch, start, end, rows) per train step."""
    first = [s for s in steps if s[0] == 0]
    full = 0
    while full < len(first) and first[full][3] == batch_size:
        full += 1
    n = min(timed, full - warmup)
    if warmup < 1 or n < 1:
        return {"steady_examples_per_s": None, "timed_steps": 0, "warmup_steps": warmup,
                "why": f"{full} full batches in the epoch: none left after {warmup} warm-up steps"}
    window = first[warmup:warmup + n]
    seconds = window[-1][2] - first[warmup - 1][2]
    durations = sorted(e - s for _, s, e, _ in window)
    return {"steady_examples_per_s": sum(r for *_, r in window) / seconds, "timed_steps": n, "warmup_steps": warmup,
            "timed_seconds": seconds, "step_seconds_median": durations[len(durations) // 2],
            "step_seconds_max": durations[-1],
            # time between the steps (fetching the next batch, the loop's own work): input stalls show here
            "between_steps_seconds": seconds - sum(durations),
            "warmup_step_seconds": [round(e - s, 4) for _, s, e, _ in first[:warmup]]}
