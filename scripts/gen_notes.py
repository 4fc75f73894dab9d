#!/usr/bin/env python3
"""Deterministic synthetic notes JSONL for load tests: `gen_notes.py N [SEED] > notes.jsonl`.

Notes are drawn from six topic vocabularies so that related notes exist; lengths vary like real
notes (a few words to ~120). Only for exercising the service at scale: quality numbers come from
the Debian corpus (`notellm data debian`)."""
import json
import random
import sys

TOPICS = {
    "travel": "mountain beach hotel flight hiking trail island museum sunset backpack train visa".split(),
    "food": "noodles recipe spicy bakery coffee dumplings sauce dessert breakfast grill tofu soup".split(),
    "tech": "laptop compiler kernel database python rust server network battery camera gpu cache".split(),
    "fashion": "dress sneakers jacket vintage denim scarf makeup lipstick outfit silk coat boots".split(),
    "fitness": "running yoga protein stretch marathon squat cardio gym swimming bike plank rowing".split(),
    "home": "kitchen garden sofa lamp plants storage paint curtain shelf candle rug balcony".split(),
}
COMMON = "the a my with and for today best new really tips guide love week how why".split()


def main() -> None:
    n = int(sys.argv[1])
    rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    cats = sorted(TOPICS)
    out = sys.stdout
    for i in range(n):
        cat = rng.choice(cats)
        words = TOPICS[cat]
        pick = lambda k: " ".join(rng.choice(words) if rng.random() < 0.6 else rng.choice(COMMON) for _ in range(k))
        note = {
            "note_id": f"n{i}",
            "title": pick(rng.randint(2, 8)),
            "content": pick(rng.choice([5, 15, 30, 60, 120])) + ".",
            "hashtags": [rng.choice(words) for _ in range(rng.randint(0, 3))],
            "category": cat,
        }
        out.write(json.dumps(note) + "\n")


if __name__ == "__main__":
    main()
