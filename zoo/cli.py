"""The ``zoo`` command line: list, info, train, eval, push, pull, convert, and family verbs.

Every verb that takes config overrides (``train``, ``eval``, ``convert``) accepts ``key=value`` words in
any position, before or after its flags. ``list``, ``info`` and ``--help`` import no torch (they read
only the cards and the registry), so they answer at once.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import traceback
from pathlib import Path

from zoo.errors import ConfigError, WeightsNotAvailableError, ZooError

# `key=value` with a dotted key (`head.enabled=false`, `optim.lr=3e-4`); a path holding '=' is not one.
_OVERRIDE = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*=")
# Verbs whose positional `options` collect overrides (`zoo train` re-parses its own, see zoo.train.cli).
_OVERRIDE_VERBS = ("eval", "convert")


def _cmd_list(args) -> int:
    from zoo.cards import get_card, list_models
    from zoo.registry import get_family

    names = list_models(args.pattern, modality=args.modality)
    rows = []
    for name in names:
        card = get_card(name)
        family = get_family(card.family)
        source = card.weights.repo_id if card.weights else "-"
        rows.append((name, card.family, family.modality, "yes" if card.has_weights else "no", source))
    if args.markdown:
        print("| name | family | modality | weights | source |")
        print("|---|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(f"`{row[0]}`" if i == 0 else row[i] for i in range(len(row))) + " |")
        return 0
    if not rows:
        print(f"no model matches {args.pattern!r}")
        return 0
    widths = [max(len(str(r[i])) for r in rows + [("name", "family", "modality", "weights", "source")])
              for i in range(5)]
    for row in [("name", "family", "modality", "weights", "source")] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
    return 0


def _cmd_info(args) -> int:
    import yaml

    from zoo.api import model_info

    info = model_info(args.name)
    print(yaml.safe_dump(info, sort_keys=False).rstrip())
    return 0


def _cmd_eval(args) -> int:
    from zoo.api import load
    from zoo.config import parse_overrides
    from zoo.registry import get_family

    model = load(args.name, pretrained=not args.random_init)
    family = get_family(model.family)
    if not family.evaluate:
        raise ConfigError(f"Family {family.name!r} has no evaluation; see `zoo info {args.name}`.")
    evaluate = family.resolve(family.evaluate)
    options = parse_overrides(args.options)
    if args.trials:
        options["trials"] = args.trials
    if args.plot:
        options["plot"] = args.plot
    if args.data == "demo":
        if family.modality == "speech":  # the bundled speech corpus, as in the speech recipes
            from zoo.data import demo_corpus

            args.data = str(demo_corpus())
        # other modalities' demo data (shapes-world sets, generated scenes) is the family's to pick:
        # its evaluate gets "demo" itself, never the speech corpus
    elif args.data in ("shapes", "shapes-heldout"):  # the bundled shapes world (train / held-out split)
        from zoo.data.shapes import demo_manifest

        args.data = str(demo_manifest("heldout" if args.data == "shapes-heldout" else "train"))
    elif not Path(args.data).exists():
        raise ConfigError(f"--data {args.data!r} does not exist; give a manifest or folder, 'demo', 'shapes' or "
                          "'shapes-heldout'")
    metrics = evaluate(model, data=args.data, output=args.output, **options)
    print(json.dumps(metrics, indent=2, sort_keys=True, default=str))
    return 0


def _cmd_push(args) -> int:
    from zoo.hub import push_folder

    commit = push_folder(args.path, args.repo_id, revision=args.revision, private=args.private or None)
    print(f"pushed {args.path} to {args.repo_id}" + (f"@{args.revision}" if args.revision else "") + f" ({commit})")
    return 0


def _cmd_pull(args) -> int:
    from zoo.hub import pull

    folder = pull(args.repo_id, revision=args.revision, to=args.to, overwrite=args.overwrite)
    print(folder)
    return 0


def _cmd_convert(args) -> int:
    from zoo.config import parse_overrides
    from zoo.hub import _check_output_dir
    from zoo.registry import get_family

    family = get_family(args.family)
    if family.load is None:
        raise ConfigError(f"Family {family.name!r} has no official checkpoint format to convert.")
    if not Path(args.src).exists():
        raise ConfigError(f"{args.src!r} does not exist; give the official checkpoint file, or a folder "
                          "(a Hub snapshot or a save_pretrained folder with config.json and weights).")
    _check_output_dir(Path(args.dst), args.overwrite)
    overrides = parse_overrides(args.options)
    if getattr(args, "base", None):
        overrides["base"] = args.base  # an unknown key for families without a base: ConfigError lists the keys
    config = family.make_config(args.size, overrides, source="command-line overrides")
    model = family.load(args.src, config)  # files and folders alike: the family's loader decides
    out = model.save_pretrained(args.dst, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the built-in verbs; its epilog lists the verbs families add (``zoo segment``)."""
    from zoo.version import __version__

    from zoo.registry import list_families

    verbs = [f"  zoo {verb} ...    ({family.name})" for family in list_families() for verb in family.commands]
    parser = argparse.ArgumentParser(
        prog="zoo", description="Self-supervised speech, vision and multimodal models.",
        epilog=("family commands (`zoo VERB --help`):\n" + "\n".join(verbs)) if verbs else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"zoo {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("list", help="list model names")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. '*sylber*'")
    p.add_argument("--modality", choices=["speech", "vision", "multimodal"])
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("info", help="show a model's card and config")
    p.add_argument("name", help="card name (no torch import), zoo folder, or hf-hub:org/name[@revision]")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("train", help="train or fine-tune a family with a recipe")
    try:
        from zoo.train import cli as train_cli
    except ImportError:  # the engine is optional at import time for the rest of the CLI
        train_cli = None
    if train_cli is not None:
        train_cli.add_arguments(p)
        p.set_defaults(func=train_cli.main)

    p = sub.add_parser("eval", help="evaluate a model on a manifest")
    p.add_argument("name", help="card name, hf-hub:org/name or a local folder")
    p.add_argument("--data", required=True,
                   help="JSONL manifest, folder, demo (the family's bundled demo data: the speech corpus for "
                        "speech models), or shapes / shapes-heldout (the bundled shapes world)")
    p.add_argument("--trials", help="trial list (speaker verification)")
    p.add_argument("--plot", help="also draw the family's figure into this PNG (e.g. a reconstruction grid)")
    p.add_argument("--output", help="write the metrics as JSON here")
    p.add_argument("--random-init", action="store_true", help="evaluate with pretrained=False")
    p.add_argument("options", nargs="*", default=[], help="family options as key=value")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("push", help="upload a zoo-format folder to the Hub")
    p.add_argument("path")
    p.add_argument("repo_id")
    p.add_argument("--revision", help="branch to push to (created if missing)")
    p.add_argument("--private", action="store_true")
    p.set_defaults(func=_cmd_push)

    p = sub.add_parser("pull", help="download a zoo-format repo from the Hub")
    p.add_argument("repo_id", help="org/name[@revision]")
    p.add_argument("--revision")
    p.add_argument("--to", help="copy the files into this folder")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_pull)

    p = sub.add_parser("convert", help="official checkpoint (file or folder) -> zoo format")
    p.add_argument("family")
    p.add_argument("src", help="checkpoint file, or a folder (Hub snapshot / save_pretrained output)")
    p.add_argument("dst")
    p.add_argument("--size", help="the family's size (default: the first, see `zoo info`)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--base", help="the base model an adapter-style checkpoint applies to (card, hf-hub:org/name or "
                                   "folder), for families whose config has a 'base' key (e.g. unictokens concepts)")
    p.add_argument("options", nargs="*", default=[], help="config overrides as key=value")
    p.set_defaults(func=_cmd_convert)
    return parser


def _family_command(argv: list[str]):
    """A verb contributed by a family (e.g. `zoo segment`), or None."""
    if not argv or argv[0].startswith("-"):
        return None
    from zoo.registry import list_families

    for family in list_families():
        if argv[0] in family.commands:
            return family.resolve(family.commands[argv[0]])
    return None


def split_overrides(words: list[str], switches: set[str] | frozenset[str] = frozenset()) -> tuple[list[str], list[str]]:
    """``(other words, key=value overrides)``: overrides may stand anywhere among a verb's arguments.

    A word is an override when it looks like ``dotted.key=value`` and is not an existing path, and it is
    not the value of an option (``--data x=y.jsonl``); ``switches`` are the options that take no value
    (``--overwrite``), after which an override may follow.
    """
    rest, overrides = [], []
    for index, word in enumerate(words):
        previous = words[index - 1] if index else ""
        after_option = previous.startswith("-") and "=" not in previous and previous not in switches
        if _OVERRIDE.match(word) and not after_option and not os.path.exists(word):
            overrides.append(word)
        else:
            rest.append(word)
    return rest, overrides


def _switches(parser: argparse.ArgumentParser, verb: str) -> set[str]:
    """The options of ``verb`` that take no value (``--overwrite``, ``--random-init``)."""
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        sub = action.choices.get(verb) if isinstance(action.choices, dict) else None
        if sub is not None:
            return {option for act in sub._actions if act.nargs == 0 for option in act.option_strings}
    return set()


def _cli_hint(argv: list[str]) -> str:
    """How to get a model without a download, in the flags of the verb that was run."""
    verb = argv[0] if argv else ""
    options: set[str] = set()
    if verb == "eval":
        return "Give a local zoo folder as NAME, or add --random-init for random weights."
    command = None
    try:
        command = _family_command(argv)
    except ZooError:
        pass
    if command is not None:
        module = sys.modules.get(getattr(command, "__module__", ""), None)
        parser = getattr(module, "build_parser", None)
        if callable(parser):
            options = {option for action in parser()._actions for option in action.option_strings}
    ways = []
    if "--model" in options:
        ways.append("give a local zoo folder with --model DIR")
    if "--random-init" in options:
        ways.append("add --random-init for random weights")
    if not ways:
        return ""
    return ways[0][0].upper() + ways[0][1:] + (f", or {ways[1]}" if len(ways) > 1 else "") + "."


def _discard_stdout() -> None:
    """Point file descriptor 1 at /dev/null, so the interpreter's final flush cannot fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a test harness: nothing to redirect
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    """Run the ``zoo`` command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    User errors (any :class:`~zoo.errors.ZooError`) print one ``error: ...`` line and return 2
    (``--debug`` adds the traceback); Ctrl-C returns 130; a reader that closes the output pipe early
    (``zoo list | head``) ends the command quietly with 141.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    try:
        verb = _family_command(argv)
        if verb is not None:
            status = int(verb(argv[1:]) or 0)
            sys.stdout.flush()
            return status
        parser = build_parser()
        overrides: list[str] = []
        if argv and argv[0] in _OVERRIDE_VERBS:
            rest, overrides = split_overrides(argv[1:], _switches(parser, argv[0]))
            argv = [argv[0], *rest]
        args, extra = parser.parse_known_args(argv)
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if overrides:
            args.options = list(getattr(args, "options", None) or []) + overrides
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe raises here, inside the handler below, not at interpreter exit
        return status
    except BrokenPipeError:
        # The reader went away (`zoo list | head -3`): stop quietly, as Unix tools do, with 128 + SIGPIPE.
        _discard_stdout()
        return 141
    except WeightsNotAvailableError as err:
        if debug:
            traceback.print_exc()
        print(f"error: {err.with_hint(_cli_hint(argv)) if err.python_hint else err}", file=sys.stderr)
        return 2
    except ZooError as err:
        if debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
