"""Generate a second synthetic speech corpus: espeak-ng voices and sentences the demo corpus lacks.

    apt-get install -y espeak-ng
    python -m zoo.speech.ca_dino.make_unseen_voices runs/unseen-voices     # ~1 min, ~13 MB of WAV

The bundled demo corpus (``zoo.data.make_demo_corpus``) uses ten espeak-ng voices built from
the standard variants m1-m4, m7 and f1-f5 and its own 60 sentences. This corpus uses ten
*other* voices (the variants m5, m6 and eight named espeak-ng variants, over the same
English accents) reading 60 *other* sentences, so a speaker model trained on the demo corpus
meets voices and words it has never seen. The audio is deterministic for a given espeak-ng
version (1.51 here) and is not committed; the generator is. Output: ``OUT/audio/<voice>/*.wav``
(16 kHz, 16-bit PCM) and ``OUT/manifest.jsonl`` with ``id``, ``path``, ``speaker``,
``gender``, ``text``, ``duration`` (s) and ``syllables``, the demo manifest's fields.
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path

SEED = 4321
UTTERANCES_PER_VOICE = 24

# (espeak-ng voice+variant, gender, pitch 0-99, speed in words per minute). None of these
# voice+variant pairs, and none of the variants except the accents, occur in the demo corpus.
VOICES = [
    ("en-us+m5", "male", 40, 155),
    ("en-gb-x-rp+Annie", "female", 70, 160),
    ("en-029+edward", "male", 35, 145),
    ("en-gb-scotland+linda", "female", 60, 165),
    ("en-us-nyc+quincy", "male", 45, 170),
    ("en+steph", "female", 72, 150),
    ("en-gb-x-gbcwmd+john", "male", 30, 160),
    ("en-us+aunty", "female", 65, 140),
    ("en-gb-x-gbclan+max", "male", 50, 175),
    ("en-gb+m6", "male", 42, 150),
]

# Written for this corpus; none occurs in the demo corpus. Short, plain sentences of 1.5-3 s.
SENTENCES = [
    "The lighthouse keeper counted every wave.",
    "A grey cloud hid the mountain top.",
    "Grandmother knits warm socks in winter.",
    "The pilot checked the map twice.",
    "Seven geese landed on the pond.",
    "Our neighbour repairs old radios.",
    "The market sells cheese on Fridays.",
    "He whistled a tune on the way home.",
    "The library closes early on Sunday.",
    "Thunder rolled across the valley.",
    "She keeps her keys in a blue jar.",
    "The baker rises before dawn.",
    "Paint the fence before it rains.",
    "The violin sounded sweet and clear.",
    "Foxes hunt in the quiet fields.",
    "My uncle drives a yellow truck.",
    "The museum has a huge whale skeleton.",
    "Ice cream melts fast in July.",
    "The captain steered toward the harbour.",
    "Spiders spin their webs at night.",
    "We picked ripe cherries last June.",
    "The carpenter measured the shelf.",
    "A lonely owl called from the barn.",
    "Her garden is full of roses.",
    "The engine hummed all the way north.",
    "Pack a sweater for the mountains.",
    "The kitten chased a paper ball.",
    "He painted a portrait of his dog.",
    "The castle walls are made of stone.",
    "Fresh oranges came from the south.",
    "The nurse smiled and closed the door.",
    "Waves crashed against the rocks.",
    "The students cheered after the exam.",
    "A tall giraffe ate the green leaves.",
    "Dinner will be ready at seven.",
    "The mechanic fixed the flat tyre.",
    "Candles flickered in the dark hall.",
    "The farmer sold honey and eggs.",
    "Snow covered the roofs of the village.",
    "Keep the receipt for the jacket.",
    "The choir practised every Tuesday.",
    "A parrot repeated my name.",
    "The bridge was closed for repairs.",
    "Lemonade is best on a hot day.",
    "The hikers rested by the waterfall.",
    "His watch stopped at midnight.",
    "The gardener trimmed the hedge.",
    "Squirrels hide nuts for the winter.",
    "The tailor sewed a button on my coat.",
    "Bright lanterns lit the narrow street.",
    "The goalkeeper caught the ball.",
    "Turtles move slowly on the beach.",
    "We rowed the canoe across the lake.",
    "The scientist wrote notes in pencil.",
    "Pancakes taste good with syrup.",
    "The ferry sails every hour.",
    "Autumn leaves turn red and gold.",
    "The postman delivered three parcels.",
    "A gentle breeze moved the curtains.",
    "The doctor listened to my heart.",
]


def make_corpus(out: Path, *, overwrite: bool = False) -> list[dict]:
    """Synthesise ``VOICES`` x ``UTTERANCES_PER_VOICE`` clips into ``out``; returns the manifest rows.

    Raises ``ZooError`` when ``out`` already holds a corpus and ``overwrite`` is false, and
    ``SystemExit`` when espeak-ng is not installed.
    """
    import soundfile

    from zoo.data import write_manifest
    from zoo.data.make_demo_corpus import SAMPLE_RATE, count_syllables, synthesize
    from zoo.errors import ZooError

    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is not installed (apt-get install -y espeak-ng).")
    out = Path(out)
    if (out / "manifest.jsonl").exists() or (out / "audio").exists():
        if not overwrite:
            raise ZooError(f"{out} already holds a corpus; pass --overwrite to replace it.")
        shutil.rmtree(out / "audio", ignore_errors=True)
    rng = random.Random(SEED)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for voice, gender, pitch, speed in VOICES:
            slug = voice.replace("+", "_")
            folder = out / "audio" / slug
            folder.mkdir(parents=True, exist_ok=True)
            for index, text in enumerate(rng.sample(SENTENCES, UTTERANCES_PER_VOICE)):
                wave = synthesize(text, voice, pitch + rng.randint(-4, 4), speed + rng.randint(-10, 10), Path(work))
                utterance_id = f"{slug}-{index:03d}"
                path = folder / f"{utterance_id}.wav"
                soundfile.write(str(path), wave, SAMPLE_RATE, subtype="PCM_16")
                rows.append({"id": utterance_id, "path": path.relative_to(out).as_posix(), "speaker": voice,
                             "gender": gender, "text": text, "duration": round(len(wave) / SAMPLE_RATE, 4),
                             "syllables": count_syllables(text)})
    write_manifest(rows, out / "manifest.jsonl")
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m zoo.speech.ca_dino.make_unseen_voices OUT [--overwrite]``; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder (e.g. runs/unseen-voices)")
    parser.add_argument("--overwrite", action="store_true", help="replace a corpus already in OUT")
    args = parser.parse_args(argv)
    rows = make_corpus(args.out, overwrite=args.overwrite)
    seconds = sum(row["duration"] for row in rows)
    print(f"{len(rows)} utterances, {len({r['speaker'] for r in rows})} voices, {seconds:.1f} s -> "
          f"{args.out / 'manifest.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
