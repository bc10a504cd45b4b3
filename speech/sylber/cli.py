"""``zoo segment AUDIO [AUDIO ...] [--plot out.png] [--model NAME|PATH]``: syllable segments of audio files."""
from __future__ import annotations

import argparse
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo segment", description="Segment speech into syllables with Sylber.")
    parser.add_argument("audio", nargs="+", help="audio files (wav/flac/ogg; any rate, mono or stereo)")
    parser.add_argument("--model", default="sylber-base",
                        help="card name, hf-hub:org/name or a local zoo folder (default: sylber-base)")
    parser.add_argument("--random-init", action="store_true", help="build the model with random weights")
    parser.add_argument("--norm-threshold", type=float, default=None, help="default: the model's (2.6)")
    parser.add_argument("--merge-threshold", type=float, default=None, help="default: the model's (0.8)")
    parser.add_argument("--plot", help="write a PNG of the first file's segmentation here "
                                       "(with several files, one PNG each: out-0.png, out-1.png, ...)")
    parser.add_argument("--json", dest="json_path", help="write all segments as JSON here")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    return parser


def segment_main(argv: list[str]) -> int:
    import torch

    import zoo
    from zoo.audio import load_audio
    from zoo.speech.sylber.plot import plot_segmentation

    args = build_parser().parse_args(argv)
    model = zoo.load(args.model, pretrained=not args.random_init, device=args.device)
    if model.family != "sylber":
        from zoo.errors import ConfigError

        raise ConfigError(f"--model {args.model!r} is a {model.family} model; `zoo segment` needs a sylber model.")
    waves = [load_audio(path, model.sample_rate, min_samples=400) for path in args.audio]
    with torch.no_grad():
        results = model.segment(waves, model.sample_rate, norm_threshold=args.norm_threshold,
                                merge_threshold=args.merge_threshold)
    report = []
    for path, result in zip(args.audio, results):
        rate = len(result) / result.duration if result.duration else 0.0
        print(f"{path}: {len(result)} segments in {result.duration:.2f} s ({rate:.2f} per second)")
        for index, (start, end) in enumerate(result.segments.tolist()):
            token = f"  token {int(result.tokens[index])}" if result.tokens is not None else ""
            print(f"  {start:7.2f} - {end:7.2f} s{token}")
        report.append({"path": str(path), **result.to_dict()})
    if args.json_path:
        from zoo.files import write_json

        write_json(args.json_path, report, sort_keys=False)
        print(f"wrote {args.json_path}")
    if args.plot:
        target = Path(args.plot)
        for index, (wave, result) in enumerate(zip(waves, results)):
            out = target if len(waves) == 1 else target.with_name(f"{target.stem}-{index}{target.suffix or '.png'}")
            plot_segmentation(wave, result, out, sample_rate=model.sample_rate, title=None)
            print(f"wrote {out}")
    return 0
