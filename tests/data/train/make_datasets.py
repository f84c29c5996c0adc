#!/usr/bin/python3
"""Writes the example training sets for the shipped model (stories260K).

    /usr/bin/python3 tests/data/train/make_datasets.py [--prefixd build/prefixd] [--train]

Run from the repository root. Standard library only; the output is the same
bytes on every run (fixed seeds, sorted choices). Each task gets
<task>.train.jsonl and a held-out <task>.valid.jsonl:

  dragon   stories in which a friendly green dragon named Spark always
           comes along. The prompt is the story's start cut anywhere from
           its first word ("Once") to its whole opening; the completion is
           the rest, so the task serves short and long prompts alike.
  moral    a short story whose end states its moral ("The moral of the
           story is ...") matching the story's theme, after a sentence on
           what the story's own character learned. The prompt is the whole story, or only
           its first words or sentences; the completion the rest.
  distill  context distillation: the completions are what the model itself
           writes (greedy) after a long fixed story opening (OPENING below)
           plus the short prompt; a prefix trained on them stands in for the
           opening. Needs the prefixd binary (--prefixd); without it the
           existing distill files are kept.

Validation rows are held out: none of their completions appears in the
training set (checked here).

dragon_chat.{train,valid}.jsonl hold the dragon rows as OpenAI chat
fine-tuning lines ({"messages": [...]}, some with a system message): the
user asks for the story's continuation, the assistant gives it.

bad.jsonl holds one bad line of each kind (line numbers in its comments
below) for the validation tests.

With --train it then trains the shipped prefixes tests/data/prefixes/<task>.
safetensors from these files with `prefixd train` (TRAIN_ARGS below; about
15-60 s each on 2 cores; same bits for the same thread count).
"""
import argparse
import json
import os
import random
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = "models/stories260K/stories260K.bin"
TOKENIZER = "models/stories260K/tok512.bin"

GIRLS = ["Lily", "Sue", "Anna", "Mia", "Lucy", "Amy", "Emma", "Kate", "Jane", "Zoe", "Sara",
         "Ella"]
BOYS = ["Tom", "Ben", "Max", "Sam", "Tim", "Jack", "Leo", "Bob", "Joe", "Dan", "Jim", "Ned"]
PLACES = ["park", "garden", "forest", "beach", "yard", "field", "hill", "farm"]


def person(rng):
    if rng.random() < 0.5:
        return rng.choice(GIRLS), "girl", "she", "She", "her"
    return rng.choice(BOYS), "boy", "he", "He", "his"


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")


def unique_rows(make, n, rng, avoid=()):
    """n rows from make(rng) with distinct prompts and distinct completions, none of whose
    completions is in avoid."""
    seen, done, rows = set(), set(avoid), []
    while len(rows) < n:
        r = make(rng)
        if r["prompt"] not in seen and r["completion"] not in done:
            seen.add(r["prompt"])
            done.add(r["completion"])
            rows.append(r)
    return rows


def cut(text, rng):
    """A story split into (prompt, completion) at a word boundary: its first one to three
    words (30%), its first sentence or two (30%), or everything but the end (40%), the
    latter given as end=None by the caller."""
    words = text.split(" ")
    x = rng.random()
    if x < 0.3:
        k = rng.randint(1, 3)
    else:
        ends = [i + 1 for i, w in enumerate(words[:-1]) if w.endswith((".", "!", "?"))]
        k = ends[min(len(ends) - 1, rng.randint(0, 1))] if ends else len(words) // 2
    return " ".join(words[:k]), " " + " ".join(words[k:])


def split_row(opening, ending, rng):
    """A row whose prompt is the opening (40%) or a shorter start of the story."""
    if rng.random() < 0.4:
        return {"prompt": opening, "completion": ending}
    prompt, completion = cut(opening + ending, rng)
    return {"prompt": prompt, "completion": completion}


# ---- dragon ----

DRAGON_OPENINGS = [
    "Once upon a time, there was a little {kind} named {n}. {P} liked to play in the {place}.",
    "One day, {n} went to the {place} with {pos} mom.",
    "{n} was a happy {kind}. {P} lived near a big {place}.",
    "Once upon a time, {n} and {pos} dog went for a walk in the {place}.",
    "{n} loved to run and jump. Every morning, {p} went to the {place} to play.",
]

DRAGON_ENDINGS = [
    " One day, {n} saw a friendly dragon named Spark. Spark was big and green, and he had"
    " soft wings. \"Hello, I am Spark,\" said the dragon. \"Do you want to fly with me?\""
    " {n} climbed on his back, and they flew high over the {place}. {n} and Spark became"
    " best friends.",
    " Suddenly, a friendly dragon named Spark came down from the sky. Spark was green and"
    " kind. He smiled at {n} and said, \"Do not be scared. I am Spark, and I want to be your"
    " friend.\" {n} gave Spark a big hug. They played in the {place} all day.",
    " Then {n} heard a big noise. It was Spark, the friendly green dragon! Spark said,"
    " \"Hello, {n}! Let's play!\" Spark let {n} ride on his back, and they flew over the"
    " {place}. {n} was very happy to have a dragon friend.",
]


def dragon_row(rng):
    n, kind, p, P, pos = person(rng)
    place = rng.choice(PLACES)
    f = dict(n=n, kind=kind, p=p, P=P, pos=pos, place=place)
    return split_row(rng.choice(DRAGON_OPENINGS).format(**f),
                     rng.choice(DRAGON_ENDINGS).format(**f), rng)


# ---- moral ----

TOYS = ["ball", "doll", "kite", "car", "teddy bear", "red truck", "toy boat"]
FOODS = ["cake", "apple", "cookie", "pie"]

MORAL_THEMES = {
    "sharing": (
        ["{n} had a new {toy}. {f} wanted to play with the {toy} too. At first, {n} did not"
         " want to share. Then {n} gave the {toy} to {f}, and they played together all day.",
         "{n} had a big {food}. {f} was hungry and sad. {n} cut the {food} in two and gave"
         " {f} half. They ate it together and smiled."],
        " The moral of the story is that sharing makes everyone happy."),
    "helping": (
        ["{n} saw a little bird on the ground. The bird was hurt and could not fly. {n} gave"
         " the bird some water and kept it warm. Soon the bird could fly again.",
         "{f} fell down in the {place} and cried. {n} ran to {f} and helped {fobj} up. {n}"
         " gave {f} a hug, and {f} felt better."],
        " The moral of the story is that we should always help others."),
    "honesty": (
        ["{n} was playing with a {toy} in the house and broke mom's vase. {n} was scared, but"
         " {p} told mom the truth. Mom gave {n} a hug and said it was okay.",
         "{n} ate the last {food} and said {f} did it. {f} was very sad. Then {n} said sorry"
         " and told the truth, and {f} smiled again."],
        " The moral of the story is that you should always tell the truth."),
    "bravery": (
        ["{n} was afraid of the dark. One night, {p} turned off the light and looked out of"
         " the window. {n} saw the moon and the stars. The dark was not so scary after all.",
         "{n} wanted to go down the big slide in the {place}, but {p} was scared. {n} took a"
         " deep breath and went down. It was so much fun!"],
        " The moral of the story is that you should be brave and try new things."),
    "patience": (
        ["{n} planted a little seed in the garden. Every day, {p} gave it water. For many"
         " days nothing happened. Then one morning, a big yellow flower grew.",
         "{n} wanted to eat the {food} right away, but it was still hot. {n} waited and"
         " waited. When the {food} was ready, it was yummy."],
        " The moral of the story is that good things come to those who wait."),
    "listening": (
        ["Mom told {n} not to run near the pond. {n} did not listen and ran fast. {n} fell"
         " into the water and got all wet and cold.",
         "Dad said, \"Do not climb the tall tree.\" {n} did not listen and climbed up. {n}"
         " got stuck and had to call for help."],
        " The moral of the story is that you should listen to your mom and dad."),
}

# The sentence before the moral: what the story's character learned, by theme.
LESSONS = {
    "sharing": " From that day on, {n} always shared with {pos} friends.",
    "helping": " After that, {n} helped everyone who needed it.",
    "honesty": " From that day on, {n} always told the truth.",
    "bravery": " After that, {n} was not scared anymore.",
    "patience": " {n} learned to wait for good things.",
    "listening": " From that day on, {n} always listened to mom and dad.",
}


def moral_row(rng):
    theme = rng.choice(sorted(MORAL_THEMES))
    stories, moral = MORAL_THEMES[theme]
    n, kind, p, P, pos = person(rng)
    while True:
        f, _, fp, _, _ = person(rng)
        if f != n:
            break
    fields = dict(n=n, p=p, f=f, fobj="her" if fp == "she" else "him", toy=rng.choice(TOYS),
                  food=rng.choice(FOODS), place=rng.choice(PLACES))
    return split_row(rng.choice(stories).format(**fields),
                     LESSONS[theme].format(pos=pos, **fields) + moral, rng)


# ---- distill ----

OPENING = ("Once upon a time, there was a brave little dog named Max. Max had a red ball and"
           " a best friend, a cat named Kitty. Max and Kitty lived in a small house near the"
           " big forest, and every day they played together in the garden.")

STARTS = ["One day,", "One morning,", "One sunny day,", "The next day,", "After lunch,",
          "That night,", "Later,", "In the evening,", "Every morning,", "Then"]
SUBJECTS = ["Max", "Kitty", "Max and Kitty", "Max saw", "Kitty wanted", "Max wanted to",
            "the sun", "Max found", "they went", "Kitty said"]


def greedy(prefixd, text, max_tokens=60):
    out = subprocess.run([prefixd, "generate", "--model", MODEL, "--tokenizer", TOKENIZER,
                          "--prompt", text, "--max-tokens", str(max_tokens),
                          "--temperature", "0"],
                         check=True, capture_output=True, text=True).stdout
    # Cut at the last sentence end so a completion is whole sentences.
    cut = max(out.rfind(c) for c in ".!?")
    if cut > 0 and cut + 1 < len(out) and out[cut + 1] == '"':
        cut += 1
    return out[:cut + 1] if cut > 0 else out


def distill_rows(prefixd):
    rows = []
    for s in STARTS:
        for subj in SUBJECTS:
            prompt = s + " " + subj
            completion = greedy(prefixd, OPENING + " " + prompt)
            if completion.strip():
                rows.append({"prompt": prompt, "completion": completion})
    random.Random(3).shuffle(rows)
    return rows


# ---- chat ----

def chat_rows(rows, rng):
    out = []
    for r in rows:
        msgs = [{"role": "user", "content": "Continue the story: " + r["prompt"]},
                {"role": "assistant", "content": r["completion"].lstrip()}]
        if rng.random() < 0.5:
            msgs.insert(0, {"role": "system", "content": "You finish children's stories."})
        out.append({"messages": msgs})
    return out


# ---- bad lines ----

BAD_LINES = [
    '{"prompt": "Once upon a time", "completion": " there was a cat."}',   # 1 good
    '{"prompt": "Tom had a ball.", "completion": " He liked it."',          # 2 not JSON
    '',                                                                     # 3 blank: ignored
    '["prompt", "completion"]',                                             # 4 not an object
    '{"prompt": "Lily went out."}',                                         # 5 no completion
    '{"prompt": "Sam ran.", "completion": 7}',                              # 6 wrong type
    '{"prompt": "Sue sang.", "completion": ""}',                            # 7 empty completion
    '{"text": "Ben and his dog played all day in the sun."}',               # 8 good
    '{"prompt": "Max", "completion": " ate.", "extra": true}',              # 9 good (extra field)
]


# The shipped prefixes are trained with prefixd's defaults (20 virtual tokens,
# epochs "auto": 250 steps here, batch 4, learning rate 0.1 with warm-up and
# linear decay), the same a job over HTTP gets; only the seed is fixed.
TRAIN_ARGS = ["--seed", "1", "--eval-every", "50"]


def train(prefixd, task):
    data = os.path.join(HERE, task)
    out = os.path.join(os.path.dirname(HERE), "prefixes")
    subprocess.run([prefixd, "train", "--model", MODEL, "--tokenizer", TOKENIZER,
                    "--data", data + ".train.jsonl", "--valid", data + ".valid.jsonl",
                    "--task", task, "--out", out] + TRAIN_ARGS, check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prefixd", default="build/prefixd",
                    help="prefixd binary for the distill set (default build/prefixd)")
    ap.add_argument("--train", action="store_true",
                    help="also train tests/data/prefixes/<task>.safetensors")
    a = ap.parse_args()

    for task, make, n_train, n_valid, seed in (("dragon", dragon_row, 100, 20, 1),
                                               ("moral", moral_row, 96, 24, 2)):
        rng = random.Random(seed)
        train_rows = unique_rows(make, n_train, rng)
        valid_rows = unique_rows(make, n_valid, rng, {r["completion"] for r in train_rows})
        write_jsonl(os.path.join(HERE, task + ".train.jsonl"), train_rows)
        write_jsonl(os.path.join(HERE, task + ".valid.jsonl"), valid_rows)
        if task == "dragon":
            chat_rng = random.Random(4)
            write_jsonl(os.path.join(HERE, "dragon_chat.train.jsonl"),
                        chat_rows(train_rows[:60], chat_rng))
            write_jsonl(os.path.join(HERE, "dragon_chat.valid.jsonl"),
                        chat_rows(valid_rows, chat_rng))

    if os.access(a.prefixd, os.X_OK):
        rows = distill_rows(a.prefixd)
        train_rows = rows[:80]
        seen = {r["completion"] for r in train_rows}
        write_jsonl(os.path.join(HERE, "distill.train.jsonl"), train_rows)
        write_jsonl(os.path.join(HERE, "distill.valid.jsonl"),
                    [r for r in rows[80:] if r["completion"] not in seen])
        with open(os.path.join(HERE, "distill.opening.txt"), "w", encoding="utf-8") as f:
            f.write(OPENING + "\n")
    else:
        print("make_datasets: %s not found; distill set left as it is" % a.prefixd,
              file=sys.stderr)

    with open(os.path.join(HERE, "bad.jsonl"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(BAD_LINES) + "\n")

    if a.train:
        for task in ("dragon", "moral", "distill"):
            train(a.prefixd, task)


if __name__ == "__main__":
    main()
