"""``zoo train FAMILY|NAME --config FILE [key=value ...] [torchrun options] [--overwrite] [--resume]``.

Like torchtune's ``tune run`` (pytorch/torchtune:torchtune/_cli/run.py): with ``--nproc-per-node N > 1`` or ``--nnodes``
it re-launches itself through ``torch.distributed.run`` (torchrun), and every process runs the
recipe; otherwise it trains in this process.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from zoo.errors import ZooError


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="YAML recipe (default: the family's defaults)")
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in train.output_dir")
    parser.add_argument("--resume", action="store_true",
                        help="resume from the latest checkpoint in train.output_dir (error if there is none); "
                             "by default a run resumes when it finds one (train.resume=auto)")
    group = parser.add_argument_group("distributed (torchrun)")
    group.add_argument("--nproc-per-node", "--nproc_per_node", dest="nproc_per_node", type=int, default=1,
                       help="processes on this node (GPUs, or CPU workers with gloo)")
    group.add_argument("--nnodes", default="1", help="nodes (or MIN:MAX for elastic)")
    group.add_argument("--node-rank", "--node_rank", dest="node_rank", type=int, default=0)
    group.add_argument("--master-addr", "--master_addr", dest="master_addr", default="127.0.0.1")
    group.add_argument("--master-port", "--master_port", dest="master_port", type=int, default=None,
                       help="default: a free port on a single node, 29500 across nodes")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``zoo train``'s arguments to ``parser``: the target, ``key=value`` overrides (anywhere), ``--config``,
    ``--overwrite``, ``--resume`` and the torchrun options.
    """
    parser.add_argument("target", metavar="FAMILY|NAME",
                        help="family to train (see `zoo list`), a model name to fine-tune (sets model.init), "
                             "or a trainer class as package.module:Class")
    # REMAINDER: key=value overrides may come before or after the options (re-parsed in main)
    overrides = parser.add_argument("overrides", nargs=argparse.REMAINDER, default=[], metavar="key=value",
                                    help="recipe overrides with dotted keys, e.g. optim.lr=3e-4 train.max_steps=1000")
    overrides.required = False  # argparse marks REMAINDER required; a missing target must not ask for overrides
    _add_options(parser)


def _split_options(args: argparse.Namespace) -> None:
    """Options that came after the target are in ``args.overrides``: parse them out."""
    extra = list(args.overrides or [])
    if any(item.startswith("-") for item in extra):
        options = argparse.ArgumentParser(prog="zoo train", add_help=False)
        _add_options(options)
        _, rest = options.parse_known_args(extra, namespace=args)
        args.overrides = rest


def _overrides(args) -> list[str]:
    items = list(args.overrides or [])
    for item in items:
        if item.startswith("-") or "=" not in item:
            raise ZooError(f"Unexpected argument {item!r}: pass recipe settings as key=value "
                           "(e.g. train.max_steps=100) or use --config.")
    if args.overwrite:
        items.append("train.overwrite=true")
    if args.resume:
        items.append("train.resume=true")
    return items


def _setup_logging() -> None:
    zoo_logger = logging.getLogger("zoo")
    if not zoo_logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        zoo_logger.addHandler(handler)
        zoo_logger.setLevel(logging.INFO)
        rank = os.environ.get("RANK")
        if rank not in (None, "0"):
            zoo_logger.setLevel(logging.WARNING)  # rank 0 speaks for the run


def torchrun_argv(args, overrides: list[str]) -> list[str]:
    """torchrun's argv that runs ``python -m zoo.train.cli`` with the same recipe in every process."""
    argv = ["--nproc-per-node", str(args.nproc_per_node), "--nnodes", str(args.nnodes)]
    if str(args.nnodes) == "1" and args.master_port is None:
        argv.append("--standalone")
    else:
        argv += ["--node-rank", str(args.node_rank), "--master-addr", args.master_addr,
                 "--master-port", str(args.master_port or 29500)]
    argv += ["--module", "zoo.train.cli", args.target]
    if args.config:
        argv += ["--config", args.config]
    return argv + overrides


def main(args: argparse.Namespace) -> int:
    """Run ``zoo train`` for parsed ``args``: validate the recipe first, then train here or relaunch through torchrun
    (``--nproc-per-node > 1`` or ``--nnodes``). Prints the final folder; returns the exit status. Raises
    :class:`~zoo.errors.ZooError` for user errors and ``KeyboardInterrupt`` after Ctrl-C (a checkpoint is saved).
    """
    from zoo.train import distributed, load_recipe, run

    _setup_logging()
    _split_options(args)
    overrides = _overrides(args)
    config = load_recipe(args.config, overrides, family=args.target)  # fail fast, before any process starts
    multi = args.nproc_per_node > 1 or str(args.nnodes) != "1"
    if multi and not distributed.launched_by_torchrun():
        from torch.distributed import run as torchrun
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

        launch = torchrun.parse_args(torchrun_argv(args, overrides))
        try:
            torchrun.run(launch)
        except ChildFailedError as err:
            print(f"error: a training process failed: {err}", file=sys.stderr)
            return 1
        return 0
    final = run(config)
    if os.environ.get("RANK", "0") == "0":
        print(final)
    return 0


def _entry(argv: list[str] | None = None) -> int:
    """``python -m zoo.train.cli`` (what torchrun starts in each process)."""
    parser = argparse.ArgumentParser(prog="zoo train")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return main(args)
    except ZooError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(_entry())
