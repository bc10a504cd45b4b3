"""Generate the bundled demo corpus under zoo/data/demo/ (speech + images).

    apt-get install -y espeak-ng          # only needed to regenerate the speech part
    python -m zoo.data.make_demo_corpus   # rewrites zoo/data/demo/speech and zoo/data/demo/images

The outputs are committed, so neither CI nor users need espeak-ng. Speech: VOICES x
UTTERANCES_PER_VOICE short sentences from SENTENCES (picked with a fixed seed), synthesised by
espeak-ng, resampled to 16 kHz mono with zoo.audio, lightly trimmed of leading/trailing silence,
stored as Ogg Vorbis (FLAC would not fit the 5 MB budget). The audio is deterministic for a given
espeak-ng version; the Ogg stream serial numbers libsndfile picks make the bytes differ per run.
Images: small procedural 64x64 PNG shapes, one sub-folder per label.
"""
from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from zoo.files import atomic_open

SAMPLE_RATE = 16000
SEED = 1234
UTTERANCES_PER_VOICE = 26

# (espeak-ng voice+variant, pitch 0-99, speed in words per minute): accents, variants, pitch
# and rate all differ so that speaker models have something real to tell apart.
VOICES = [
    ("en-us+m1", 35, 150),
    ("en-us+f2", 65, 165),
    ("en+m3", 45, 140),
    ("en+f4", 75, 170),
    ("en-gb-scotland+m4", 30, 155),
    ("en-029+f1", 60, 150),
    ("en-gb-x-rp+m7", 50, 175),
    ("en-us-nyc+f5", 80, 160),
    ("en-gb-x-gbclan+m2", 25, 145),
    ("en-gb-x-gbcwmd+f3", 55, 180),
]

# Written for this corpus: short, plain sentences of 1-3 s when spoken.
SENTENCES = [
    "The cat sat on the mat.",
    "We went to the park today.",
    "She has a red hat.",
    "The sun is very hot.",
    "Please open the window.",
    "My brother likes green apples.",
    "The bus was late again.",
    "I can see the blue sea.",
    "He drinks milk every morning.",
    "The dog ran after the ball.",
    "They sang a happy song.",
    "Turn off the light, please.",
    "The book is on the table.",
    "We will meet at noon.",
    "The baby is sleeping now.",
    "A bird sang in the tree.",
    "Bring me a cup of tea.",
    "The river is cold and deep.",
    "Our garden has yellow flowers.",
    "The train leaves at nine.",
    "I lost my black pen.",
    "The children played in the snow.",
    "Wash your hands before dinner.",
    "The old man walked slowly.",
    "It rained all night long.",
    "She painted the door white.",
    "We bought fresh bread today.",
    "The clock on the wall stopped.",
    "Let us go home now.",
    "The fish swam under the boat.",
    "He found a coin in the sand.",
    "This road leads to the town.",
    "The moon is bright tonight.",
    "Please sit down and rest.",
    "My sister reads a lot.",
    "The wind blew the leaves away.",
    "We need more water.",
    "The shop opens at eight.",
    "He fixed the broken chair.",
    "The soup is too salty.",
    "They live near the station.",
    "I like to ride my bike.",
    "The horse jumped over the fence.",
    "Close the door behind you.",
    "The kettle is boiling.",
    "She wrote a long letter.",
    "The farmer grows corn and beans.",
    "We watched a funny film.",
    "The plane flew over the hills.",
    "Put the box on the floor.",
    "The teacher smiled at us.",
    "It is time for lunch.",
    "The stars are far away.",
    "My shoes are wet and muddy.",
    "He plays the drum loudly.",
    "The milk is in the fridge.",
    "A small boat crossed the lake.",
    "Lemons taste sour.",
    "The phone rang twice.",
    "We planted seven trees.",
]

_VOWEL_GROUP = re.compile(r"[aeiouy]+")
_WORD = re.compile(r"[a-z']+")


def count_word_syllables(word: str) -> int:
    """Syllables of one English word by a vowel-group rule (an estimate, deterministic).

    1. Lower-case, keep letters only; count maximal runs of the vowels a e i o u y.
    2. A silent final "e" is not a syllable ("make" 1, "stone" 1) unless the word ends in
       consonant + "le" ("table" 2) or in "ee"/"ye" (already a single run).
    3. "-ed" after a consonant other than t/d is silent ("jumped" 1, "wanted" 2).
    4. "-es" after a consonant other than s/x/z/c/g/h is silent ("makes" 1, "boxes" 2), except
       consonant + "les" ("apples" 2).
    5. Every word has at least one syllable.
    """
    letters = re.sub(r"[^a-z]", "", word.lower())
    if not letters:
        return 0
    count = len(_VOWEL_GROUP.findall(letters))
    if count > 1:
        if letters.endswith("e") and not letters.endswith(("ee", "ye")):
            if not _consonant_le(letters):
                count -= 1
        elif len(letters) > 2 and letters[-3] not in "aeiouy":
            if letters.endswith("ed") and letters[-3] not in "td":
                count -= 1
            elif letters.endswith("es") and letters[-3] not in "sxzcgh" and not _consonant_le(letters[:-1]):
                count -= 1
    return max(count, 1)


def _consonant_le(letters: str) -> bool:
    return letters.endswith("le") and len(letters) > 2 and letters[-3] not in "aeiouy"


def count_syllables(text: str) -> int:
    """Sum of :func:`count_word_syllables` over the words of ``text`` (each word counted alone)."""
    return sum(count_word_syllables(word) for word in _WORD.findall(text.lower()))


def trim_silence(wave: np.ndarray, sample_rate: int = SAMPLE_RATE, *, floor_db: float = 40.0,
                 margin_s: float = 0.04) -> np.ndarray:
    """Cut leading/trailing silence: keep from the first to the last 10 ms frame within
    ``floor_db`` of the loudest frame, plus ``margin_s`` either side (so onsets stay intact)."""
    frame = sample_rate // 100
    usable = len(wave) // frame * frame
    if usable == 0:
        return wave
    rms = np.sqrt(np.mean(wave[:usable].reshape(-1, frame) ** 2, axis=1) + 1e-12)
    level_db = 20 * np.log10(rms / rms.max())
    loud = np.flatnonzero(level_db > -floor_db)
    margin = int(margin_s * sample_rate)
    start = max(int(loud[0]) * frame - margin, 0)
    stop = min((int(loud[-1]) + 1) * frame + margin, len(wave))
    return wave[start:stop]


def voice_gender(voice: str) -> str:
    """espeak-ng variants are named m1..m7 (male) and f1..f5 (female)."""
    return "female" if voice.rsplit("+", 1)[-1].startswith("f") else "male"


def synthesize(text: str, voice: str, pitch: int, speed: int, workdir: Path) -> np.ndarray:
    """espeak-ng -> float32 mono at SAMPLE_RATE, trimmed."""
    import soundfile

    from zoo.audio import prepare_waveform

    raw = workdir / "utterance.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(raw), text],
                   check=True, capture_output=True)
    data, rate = soundfile.read(str(raw), dtype="int16")
    wave = prepare_waveform(data, rate, SAMPLE_RATE, name=f"espeak-ng {voice}").numpy()
    wave = trim_silence(wave)
    peak = float(np.abs(wave).max())
    return (wave * (0.9 / peak) if peak > 0 else wave).astype(np.float32)  # same level for every voice


def make_speech(out: Path) -> list[dict]:
    """Synthesise the speech demo corpus into ``out/speech`` with espeak-ng (needs the ``espeak-ng`` program):
    the voices of ``VOICES`` reading ``UTTERANCES_PER_VOICE`` seeded sentences each, 16 kHz mono OGG, plus
    ``manifest.jsonl``. Returns the manifest rows.
    """
    import soundfile

    from zoo.data import write_manifest

    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is not installed (apt-get install -y espeak-ng); the committed corpus is unchanged.")
    speech = out / "speech"
    if (speech / "audio").exists():
        shutil.rmtree(speech / "audio")
    rows = []
    rng = random.Random(SEED)
    with tempfile.TemporaryDirectory() as work:
        for voice, pitch, speed in VOICES:
            slug = voice.replace("+", "_")
            folder = speech / "audio" / slug
            folder.mkdir(parents=True)
            for index, text in enumerate(rng.sample(SENTENCES, UTTERANCES_PER_VOICE)):
                # Small seeded jitter so one voice's utterances are not all identical in prosody.
                wave = synthesize(text, voice, pitch + rng.randint(-4, 4), speed + rng.randint(-10, 10), Path(work))
                utterance_id = f"{slug}-{index:03d}"
                path = folder / f"{utterance_id}.ogg"
                with atomic_open(path, "wb") as handle:
                    soundfile.write(handle, wave, SAMPLE_RATE, format="OGG", subtype="VORBIS")
                frames = soundfile.info(str(path)).frames
                rows.append({"id": utterance_id, "path": path.relative_to(speech).as_posix(), "speaker": voice,
                             "gender": voice_gender(voice), "text": text, "duration": round(frames / SAMPLE_RATE, 4),
                             "syllables": count_syllables(text)})
    write_manifest(rows, speech / "manifest.jsonl")
    return rows


def _shape_mask(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = size / 2 + rng.uniform(-6, 6, size=2)
    radius = rng.uniform(size * 0.22, size * 0.32)
    if kind == "circle":
        return (y - cy) ** 2 + (x - cx) ** 2 <= radius ** 2
    if kind == "square":
        return (np.abs(y - cy) <= radius * 0.85) & (np.abs(x - cx) <= radius * 0.85)
    if kind == "triangle":  # apex up: inside when below the apex and within the widening sides
        top, bottom = cy - radius, cy + radius
        half_width = (y - top) / (bottom - top) * radius
        return (y >= top) & (y <= bottom) & (np.abs(x - cx) <= half_width)
    if kind == "stripes":
        period = int(rng.integers(8, 14))
        return (x // (period // 2)) % 2 == 0  # vertical bars across the whole image
    raise ValueError(kind)


def make_images(out: Path, size: int = 64) -> list[dict]:
    """Draw the image demo set into ``out/images``: eight ``size``-pixel PNGs (four shapes in two colours each,
    on a noisy background), a sub-folder per shape, plus ``manifest.jsonl``. Returns the manifest rows.
    """
    from PIL import Image

    from zoo.data import write_manifest

    images = out / "images"
    if images.exists():
        shutil.rmtree(images)
    rng = np.random.default_rng(SEED)
    colours = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 70), "orange": (240, 150, 30)}
    plan = [("circle", "red"), ("circle", "blue"), ("square", "green"), ("square", "orange"),
            ("triangle", "blue"), ("triangle", "red"), ("stripes", "orange"), ("stripes", "green")]
    rows = []
    for index, (kind, colour) in enumerate(plan):
        background = rng.integers(200, 245, size=3)
        noise = rng.normal(0, 6, size=(size, size, 3))
        pixels = np.clip(background + noise, 0, 255)
        mask = _shape_mask(kind, size, rng)
        pixels[mask] = np.clip(np.array(colours[colour]) + rng.normal(0, 6, size=(int(mask.sum()), 3)), 0, 255)
        path = images / kind / f"{kind}_{colour}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb") as handle:
            Image.fromarray(pixels.astype(np.uint8), "RGB").save(handle, format="PNG", optimize=True)
        rows.append({"path": path.relative_to(images).as_posix(), "label": kind, "colour": colour})
    write_manifest(rows, images / "manifest.jsonl")
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m zoo.data.make_demo_corpus [--out DIR] [--only speech|images]``: regenerate the bundled demo data.
    """
    from zoo.data import DEMO_ROOT

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEMO_ROOT, help="output folder (default: the bundled demo)")
    parser.add_argument("--only", choices=["speech", "images"], help="regenerate one part only")
    args = parser.parse_args(argv)
    if args.only in (None, "images"):
        print(f"images: {len(make_images(args.out))} files")
    if args.only in (None, "speech"):
        rows = make_speech(args.out)
        seconds = sum(row["duration"] for row in rows)
        voices = len({row["speaker"] for row in rows})
        print(f"speech: {len(rows)} utterances, {voices} voices, {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
