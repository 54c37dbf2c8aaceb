"""Make the demo datasets: short phrases labelled with their tone (5 classes).

    python examples/data/make_tone_dataset.py     # writes examples/data/tone/{train,eval}.jsonl
                                                  # and examples/data/tone-chat/{train,eval}.jsonl

Phrases are a subject, a tone-bearing clause in the past tense and an ending, combined with a
fixed seed, so the files are reproducible.  The eval split is made of clauses that never
appear in training: it measures whether the model learned the task, not the sentences.  A
base instruct model answering in free text scores about 0% exact match on it.

``tone-chat`` holds the same rows as conversations, in the ``messages`` format chat models are
trained on (a list of ``{"role", "content"}``, ending with the assistant's answer): a system
message, for half of the rows an earlier exchange about another training phrase, then the
question.  The loss and the evaluation are on the last assistant message.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CLAUSES: dict[str, list[str]] = {
    "happy": [
        "won the championship and could not stop smiling",
        "got the dream job after months of trying",
        "laughed all evening at the birthday party",
        "was overjoyed to see old friends again",
        "danced in the kitchen after hearing the good news",
        "loved every minute of the holiday",
        "was thrilled with the wonderful surprise",
        "had the best day in years",
        "celebrated the new baby with the whole family",
        "beamed with pride at the graduation",
        "felt delighted when the garden bloomed",
        "cheered when the team finally scored",
        "was so glad the sun came out for the picnic",
        "grinned from ear to ear at the gift",
        "enjoyed a fantastic concert with friends",
        "felt lucky and full of joy all week",
    ],
    "sad": [
        "cried alone after the funeral",
        "missed the old house terribly",
        "felt heartbroken when the letter said no",
        "sat in silence after losing the dog",
        "could not stop thinking about the friend who moved away",
        "was lonely all through the holidays",
        "wept over the old photographs",
        "felt empty after the breakup",
        "grieved for the grandmother who passed away",
        "was miserable when nobody came to the party",
        "lost the necklace that mother left behind",
        "felt hopeless after failing the exam again",
        "watched the favourite shop close for good",
        "spent the evening in tears",
        "was sorrowful at the end of the long illness",
        "felt down and gloomy all day",
    ],
    "angry": [
        "was furious when the flight was cancelled without warning",
        "yelled at the driver who scratched the car",
        "slammed the door after the unfair decision",
        "was livid that the landlord kept the deposit",
        "lost patience after three hours on hold",
        "was outraged when a colleague stole the credit",
        "shouted at the neighbours who blasted music all night",
        "was fed up with being charged twice",
        "fumed when the repairman never showed up",
        "could not forgive the lie about the broken laptop",
        "was enraged by the rude reply from the company",
        "stormed out of the meeting in a rage",
        "was irritated by the endless excuses",
        "threw the phone across the room in anger",
        "was mad that the promise was broken again",
        "complained bitterly about the terrible service",
    ],
    "fearful": [
        "heard footsteps in the empty house at night",
        "was terrified while waiting for the test results",
        "trembled as the storm hit the coast",
        "froze when something moved in the dark basement",
        "panicked when the plane started shaking",
        "was scared that a stranger was following",
        "dreaded the urgent call from the doctor",
        "was afraid the ice on the lake would crack",
        "hid under the blanket during the thunder",
        "was frightened by the strange car outside",
        "shivered with fear when the alarm went off at midnight",
        "was anxious and could not sleep before the surgery",
        "jumped at every noise in the forest",
        "was horrified to find the front door wide open",
        "felt a chill of terror in the dark alley",
        "worried that the bridge would collapse",
    ],
    "calm": [
        "sipped tea quietly by the window",
        "watched the clouds drift slowly across the sky",
        "read peacefully in the park all afternoon",
        "listened to soft rain on the roof",
        "sat by the still lake in the morning",
        "breathed slowly and felt completely relaxed",
        "took a gentle walk along the quiet beach",
        "meditated in the silent room",
        "rested in the hammock without a care",
        "enjoyed a slow and easy sunday",
        "lay in the warm grass listening to the birds",
        "felt serene while the candles flickered",
        "drifted along the river in a small boat",
        "spent a tranquil evening by the fire",
        "felt at peace in the quiet library",
        "stretched out and let the day unwind",
    ],
}
SUBJECTS = [
    "I",
    "My sister",
    "Our neighbour",
    "The kids",
    "My boss",
    "We",
    "Tom",
    "Grandpa",
    "She",
    "He",
    "Anna",
    "My friend",
]
ENDINGS = [".", "!", " yesterday.", " last week.", " this morning.", " again.", ", honestly.", " today."]
HELD_OUT_PER_TONE = 3
TRAIN_ROWS = 480
EVAL_PER_TONE = 20


def _phrase(rng: random.Random, clause: str) -> str:
    return f"{rng.choice(SUBJECTS)} {clause}{rng.choice(ENDINGS)}"


def build(seed: int = 7) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    rng = random.Random(seed)
    train_pool, eval_rows = [], []
    for tone, clauses in CLAUSES.items():
        held_out = set(rng.sample(clauses, HELD_OUT_PER_TONE))
        for clause in clauses:
            target = eval_rows if clause in held_out else train_pool
            copies = 7 if clause in held_out else 8
            target += [{"phrase": _phrase(rng, clause), "tone": tone} for _ in range(copies)]
    rng.shuffle(train_pool)
    eval_pick = []
    for tone in CLAUSES:
        eval_pick += [r for r in eval_rows if r["tone"] == tone][:EVAL_PER_TONE]
    rng.shuffle(eval_pick)
    return train_pool[:TRAIN_ROWS], eval_pick


SYSTEM = "You name the tone of a phrase with one word: happy, sad, angry, fearful or calm."
QUESTION = "What is the tone of this phrase?\n\n{phrase}"


def _exchange(row: dict[str, str]) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": QUESTION.format(phrase=row["phrase"])},
        {"role": "assistant", "content": row["tone"]},
    ]


def chat(
    rows: list[dict[str, str]], history: list[dict[str, str]], seed: int
) -> list[dict[str, list[dict[str, str]]]]:
    """Each row as a conversation; half of them open with an earlier exchange drawn from ``history``."""
    rng = random.Random(seed)
    conversations = []
    for row in rows:
        messages = [{"role": "system", "content": SYSTEM}]
        if rng.random() < 0.5:
            earlier = rng.choice([h for h in history if h["phrase"] != row["phrase"]])
            messages += _exchange(earlier)
        conversations.append({"messages": messages + _exchange(row)})
    return conversations


def write(out: Path, splits: dict[str, list]) -> None:
    out.mkdir(exist_ok=True)
    for name, rows in splits.items():
        with (out / f"{name}.jsonl").open("w") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
        print(f"{name}: {len(rows)} rows -> {out / f'{name}.jsonl'}")


def main() -> None:
    here = Path(__file__).parent
    train, evaluation = build()
    write(here / "tone", {"train": train, "eval": evaluation})
    write(
        here / "tone-chat", {"train": chat(train, train, seed=11), "eval": chat(evaluation, train, seed=12)}
    )


if __name__ == "__main__":
    main()
