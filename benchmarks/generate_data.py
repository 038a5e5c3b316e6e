"""Time the demo data generator against its goal: 200k events in under 10 s.

Runs ``generate_transactions()`` at its defaults (about 225k events: 5,000 cards over
60 days) and at about 1M events (more cards, same rate), best of ``--repeat`` runs each,
and prints events, entities, days, seconds and events per second.

Example::

    python benchmarks/generate_data.py --repeat 3
"""

from __future__ import annotations

import argparse
import inspect
import time

from mlops.data.generate import generate_transactions

GOAL_EVENTS = 200_000
GOAL_SECONDS = 10.0


def best_of(repeat: int, n_entities: int | None) -> tuple[float, int]:
    """The fastest of ``repeat`` runs in seconds, and the number of events made.

    ``n_entities=None`` runs ``generate_transactions()`` with all its defaults.
    """
    best, events = float("inf"), 0
    for _ in range(repeat):
        started = time.perf_counter()
        if n_entities is None:
            frame = generate_transactions()
        else:
            frame = generate_transactions(n_entities=n_entities)
        best = min(best, time.perf_counter() - started)
        events = len(frame)
    return best, events


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per size; the best one counts (default 3)"
    )
    parser.add_argument(
        "--large-entities",
        type=int,
        default=22_000,
        help="cards in the large run; 22,000 over 60 days is about 1M events (default 22000)",
    )
    args = parser.parse_args()

    sizes: list[tuple[str, int | None]] = [
        ("defaults", None),
        ("~1M events", args.large_entities),
    ]
    print(f"goal: {GOAL_EVENTS:,} events in < {GOAL_SECONDS:.0f} s (best of {args.repeat})")
    print(f"{'run':<12}{'events':>12}{'entities':>10}{'days':>6}{'seconds':>10}{'events/s':>14}")
    met = True
    defaults = {
        name: p.default for name, p in inspect.signature(generate_transactions).parameters.items()
    }
    for name, n_entities in sizes:
        seconds, events = best_of(args.repeat, n_entities)
        entities, days = n_entities or defaults["n_entities"], defaults["days"]
        print(
            f"{name:<12}{events:>12,}{entities:>10,}{days:>6}{seconds:>10.3f}"
            f"{events / seconds:>14,.0f}"
        )
        met = met and events / seconds >= GOAL_EVENTS / GOAL_SECONDS
    print("goal met" if met else "goal NOT met")


if __name__ == "__main__":
    main()
