"""Pre-warm strategies over a synthetic week of traffic, replayed on a virtual clock (issue 11 §2).

    python -m bench.prewarm [--quick | --smoke] [--seed 1]

No proxy and no sleeping: a discrete-event replay of arrivals against a model of each key's instance (a start
takes START seconds; it stops SLEEP_AFTER after its last activity; running time is billed from ready), driven by
the same `Learner`/`Planner` the proxy's `prewarm: adaptive` uses (proxy/scale/adaptive.py), ticking every TICK seconds.
Traffic: a shared key with a daily pattern (busy 8-20 h), 20 per-user keys with one to three sessions a day at
their own times (a burst of requests over a few minutes, skipped on some days), and 30 keys with a few random
requests over the week. Strategies: none; the seed's fixed cron every 2 minutes on the key config names (`shared`);
the same cron on every patterned key (what it would take to cover them all); adaptive. Reported per strategy: the
share of requests that waited for a cold start and the running hours paid.
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
from dataclasses import dataclass
from typing import Iterable

from bench.lib.common import summary, table
from proxy.scale.adaptive import DAY, TICK, Learner, Planner
from proxy.config.containers import PREWARM_BUDGET

START = 2.0  # seconds from start to ready
SLEEP_AFTER = 300.0
CRON_EVERY = 120.0


def traffic(days: int, seed: int, users: int = 20, randoms: int = 30) -> list[tuple[float, str]]:
    """(time, key) arrivals over `days`, sorted."""
    rng = random.Random(seed)
    out: list[tuple[float, str]] = []
    t = 0.0  # shared: busy hours, a request every ~2 min; quiet hours every ~2 h (thinned Poisson arrivals)
    while True:
        t += rng.expovariate(1 / 120)
        if t >= days * DAY:
            break
        if 8 <= (t % DAY) / 3600 < 20 or rng.random() < 120 / 7200:
            out.append((t, "shared"))
    for u in range(users):
        sessions = [rng.uniform(6, 22) * 3600 for _ in range(rng.randint(1, 3))]
        for day in range(days):
            for at in sessions:
                if rng.random() < 0.15:
                    continue  # not today
                t = day * DAY + at + rng.gauss(0, 120)
                for _ in range(rng.randint(5, 30)):
                    out.append((t, f"user{u}"))
                    t += rng.expovariate(1 / 20)
    for r in range(randoms):
        for _ in range(rng.randint(1, 4)):
            out.append((rng.uniform(0, days * DAY), f"rand{r}"))
    return sorted(out)


@dataclass
class Instance:
    ready_at: float
    last: float  # last activity; stops SLEEP_AFTER after it


class World:
    """Each key's instance, and what it cost."""

    def __init__(self) -> None:
        self.live: dict[str, Instance] = {}
        self.paid = 0.0
        self.starts = 0

    def _expire(self, key: str, now: float) -> Instance | None:
        inst = self.live.get(key)
        if inst is not None and now >= inst.last + SLEEP_AFTER:
            self.paid += max(0.0, inst.last + SLEEP_AFTER - inst.ready_at)
            del self.live[key]
            return None
        return inst

    def warm(self, key: str, now: float) -> bool:
        return self._expire(key, now) is not None

    def request(self, key: str, now: float) -> bool:
        """A request; True when it waited for a start."""
        inst = self._expire(key, now)
        if inst is None:
            self.starts += 1
            self.live[key] = Instance(now + START, now + START)
            return True
        inst.last = max(inst.last, now)
        return now < inst.ready_at

    def prewarm(self, key: str, now: float) -> None:
        """A cron or adaptive start (or, when running, a keepalive touch)."""
        inst = self._expire(key, now)
        if inst is None:
            self.starts += 1
            self.live[key] = Instance(now + START, now + START)
        else:
            inst.last = max(inst.last, now)

    def close(self, end: float) -> None:
        for key in list(self.live):
            inst = self.live.pop(key)
            self.paid += max(0.0, min(end, inst.last + SLEEP_AFTER) - inst.ready_at)


def replay(arrivals: list[tuple[float, str]], days: int, strategy: str, cron_keys: Iterable[str] = ()) -> dict:
    world = World()
    planner = Planner(Learner()) if strategy == "adaptive" else None
    cron = list(cron_keys)
    end = days * DAY
    ticks: list[tuple[float, str]] = []
    if planner is not None:
        ticks += [(i * TICK, "tick") for i in range(int(end // TICK))]
    if cron:
        ticks += [(i * CRON_EVERY, "cron") for i in range(int(end // CRON_EVERY))]
    waited = 0
    waited_after_first_day = requests_after_first_day = 0
    latest: dict[str, float] = {}  # activity since the last tick, as the proxy samples last_activity
    prewarms = 0
    for t, what in heapq.merge(arrivals, sorted(ticks)):
        if what == "tick":
            assert planner is not None
            for key, at in latest.items():
                planner.observe(key, at)
            latest.clear()
            for key in planner.due(t, START, SLEEP_AFTER):
                world.prewarm(key, t)
                prewarms += 1
        elif what == "cron":
            for key in cron:
                world.prewarm(key, t)
        else:
            cold = world.request(what, t)
            waited += cold
            latest[what] = t
            if t >= DAY:
                requests_after_first_day += 1
                waited_after_first_day += cold
    world.close(end)
    return {"strategy": strategy, "requests": len(arrivals), "waited": waited,
            "waited_share": waited / len(arrivals), "waited_share_after_day_1":
                waited_after_first_day / max(1, requests_after_first_day),
            "running_hours": world.paid / 3600, "starts": world.starts, "prewarms": prewarms}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the same week (the replay takes seconds)")
    ap.add_argument("--smoke", action="store_true", help="tiny, for CI: 2 days, 5 users, 5 random keys")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    days, users, randoms = (2, 5, 5) if args.smoke else (7, 20, 30)
    arrivals = traffic(days, args.seed, users, randoms)
    patterned = ["shared"] + [f"user{u}" for u in range(users)]
    print(f"{days} days, {len(arrivals)} requests over {len(set(k for _, k in arrivals))} keys; start {START:g} s, "
          f"sleep_after {SLEEP_AFTER:g} s; adaptive: {TICK:g} s ticks, 5-minute slots, "
          f"budget {PREWARM_BUDGET / 3600:g} h per key per day (pre-warms: starts, and keep-warm touches of a running "
          "instance)")
    results = [replay(arrivals, days, "none"),
               {**replay(arrivals, days, "cron", ["shared"]), "strategy": "cron */2 (seed: shared)"},
               {**replay(arrivals, days, "cron", patterned), "strategy": "cron */2 (all patterned keys)"},
               replay(arrivals, days, "adaptive")]
    none, seed_cron, all_cron, adaptive = results

    def extra(r: dict) -> float:
        return max(1e-9, r["running_hours"] - none["running_hours"])

    table(["strategy", "requests", "waited", "waited %", "waited % after day 1", "running h", "h over none",
           "starts", "pre-warms"],
          [[r["strategy"], r["requests"], r["waited"], 100 * r["waited_share"], 100 * r["waited_share_after_day_1"],
            r["running_hours"], r["running_hours"] - none["running_hours"], r["starts"], r["prewarms"]]
           for r in results])
    print(f"\nadaptive vs the seed's cron: {adaptive['waited'] / max(1, seed_cron['waited']):.2f}x the cold waits at "
          f"{adaptive['running_hours'] / seed_cron['running_hours']:.2f}x its running hours (the hours pre-warm "
          f"adds to no pre-warm's: {extra(adaptive) / extra(seed_cron):.2f}x); vs cron on every "
          f"patterned key: {adaptive['waited'] / max(1, all_cron['waited']):.2f}x the cold waits at "
          f"{adaptive['running_hours'] / all_cron['running_hours']:.2f}x the running hours")
    summary("prewarm", {"smoke": args.smoke, "quick": args.quick, "days": days,
                        **{f"{k}_{name}": r[k] for name, r in zip(("none", "cron", "cron_all", "adaptive"), results)
                           for k in ("waited", "waited_share", "running_hours", "prewarms")}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
