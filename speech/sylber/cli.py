"""``zoo segment AUDIO... [--plot out.png] [--json out.json] [--model NAME|PATH]``: syllable segments of audio.

AUDIO is any mix of audio files, folders of audio files and JSONL manifests (``{"path": ...}``
per line). Files are encoded ``--batch-size`` at a time and their features segmented in
parallel threads (``--workers``, default every core), with the same segments as one at a time.
"""
from __future__ import annotations

import argparse
from pathlib import Path

# With more files than this, only one summary line per file is printed (all segments go to --json).
LIST_SEGMENTS_UP_TO = 10


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``zoo segment``."""
    parser = argparse.ArgumentParser(prog="zoo segment", description="Segment speech into syllables with Sylber.")
    parser.add_argument("audio", nargs="+", help="audio files (wav/flac/ogg/mp3, any rate, mono or multi-channel), "
                                                 "folders of them, or JSONL manifests")
    parser.add_argument("--model", default="sylber-base",
                        help="card name, hf-hub:org/name or a local zoo folder (default: sylber-base)")
    parser.add_argument("--random-init", action="store_true", help="build the model with random weights")
    parser.add_argument("--norm-threshold", type=float, default=None, help="default: the model's (2.6)")
    parser.add_argument("--merge-threshold", type=float, default=None, help="default: the model's (0.8)")
    parser.add_argument("--plot", help="write a PNG of the segmentation here (with several files, one PNG "
                                       "each: out-0.png, out-1.png, ...)")
    parser.add_argument("--json", dest="json_path", help="write all segments as JSON here")
    parser.add_argument("--batch-size", type=int, default=8, help="files per encoder batch (default 8)")
    parser.add_argument("--workers", type=int, default=None, help="segmentation threads (default: every core)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    return parser


def expand_inputs(items: list[str]) -> list[str]:
    """Files stay; a folder gives its audio files (sorted, recursive); a ``.jsonl`` file gives its rows' paths.

    Raises :class:`~zoo.errors.AudioInputError` for a missing path and
    :class:`~zoo.errors.ConfigError` for a folder or manifest without audio.
    """
    from zoo.data import audio_folder, read_manifest
    from zoo.errors import AudioInputError, ConfigError

    paths: list[str] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            rows = audio_folder(path)
        elif path.suffix.lower() == ".jsonl" and path.is_file():
            rows = read_manifest(path)
        elif path.exists():
            paths.append(str(path))
            continue
        else:
            raise AudioInputError(f"{item!r} does not exist; give audio files, folders of audio files or JSONL "
                                  "manifests.")
        if not rows:
            raise ConfigError(f"{item} holds no audio files.")
        paths.extend(str(row["path"]) for row in rows)
    return paths


def segment_files(model, paths: list[str], *, norm_threshold: float | None = None,
                  merge_threshold: float | None = None, plot=None, json_path=None, batch_size: int = 8,
                  workers: int | None = None, indent: str = "") -> list[dict]:
    """Segment audio files with ``model`` and print them as ``zoo segment`` does; returns one dict per file.

    Prints one line per file (segments, duration, segments per second for clips of at least
    1 s) and, for up to ``LIST_SEGMENTS_UP_TO`` files, each segment's start and end in seconds
    with its token id when the model has a codebook. ``plot``: PNG path (``stem-i.png`` per file
    when there are several); ``json_path``: all results as JSON.
    """
    from zoo.audio import load_audio
    from zoo.speech.sylber.plot import plot_segmentation

    report = []
    total_seconds = total_segments = 0.0
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        results = model.segment(chunk, norm_threshold=norm_threshold, merge_threshold=merge_threshold,
                                workers=workers)
        for offset, (path, result) in enumerate(zip(chunk, results)):
            rate = result.rate
            per_second = f"{rate:.2f} per second" if rate is not None else "too short for a rate"
            print(f"{indent}{path}: {len(result)} segments in {result.duration:.2f} s ({per_second})")
            if len(paths) <= LIST_SEGMENTS_UP_TO:
                for index, (begin, end) in enumerate(result.segments.tolist()):
                    token = f"  token {int(result.tokens[index])}" if result.tokens is not None else ""
                    print(f"{indent}  {begin:7.2f} - {end:7.2f} s{token}")
            total_seconds += result.duration
            total_segments += len(result)
            report.append({"path": str(path), **result.to_dict()})
            if plot:
                target = Path(plot)
                index = start + offset
                out = target if len(paths) == 1 else target.with_name(f"{target.stem}-{index}{target.suffix or '.png'}")
                plot_segmentation(load_audio(path, model.sample_rate), result, out, sample_rate=model.sample_rate)
                print(f"{indent}wrote {out}")
    if len(paths) > 1:
        rate = total_segments / total_seconds if total_seconds else 0.0
        print(f"{indent}{len(paths)} files, {total_seconds:.1f} s, {int(total_segments)} segments "
              f"({rate:.2f} per second)")
    if json_path:
        from zoo.files import write_json

        write_json(json_path, report, sort_keys=False)
        print(f"{indent}wrote {json_path}")
    return report


def segment_main(argv: list[str]) -> int:
    """Entry point of ``zoo segment`` (registered by the Sylber family); returns the exit status."""
    import zoo
    from zoo.errors import ConfigError

    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}.")
    paths = expand_inputs(args.audio)
    model = zoo.load(args.model, pretrained=not args.random_init, device=args.device)
    if model.family != "sylber":
        raise ConfigError(f"--model {args.model!r} is a {model.family} model; `zoo segment` needs a sylber model.")
    segment_files(model, paths, norm_threshold=args.norm_threshold, merge_threshold=args.merge_threshold,
                  plot=args.plot, json_path=args.json_path, batch_size=args.batch_size, workers=args.workers)
    return 0
