"""Run logs on rank 0: JSONL (one line per log step), TensorBoard scalars and a tqdm progress bar."""
from __future__ import annotations

import datetime
import json
import math
import sys
import time
from pathlib import Path

from zoo.files import write_text

LOG_FILE = "log.jsonl"
TENSORBOARD_DIR = "tensorboard"


def truncate_log(path: Path, last_step: int) -> None:
    """Keep the lines of steps <= ``last_step`` (a resumed run rewrites what followed its checkpoint)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if record.get("step", 0) <= last_step:
            kept.append(line)
    write_text(path, "".join(line + "\n" for line in kept))


class RunLogger:
    """What a run shows and keeps, on rank 0: ``log.jsonl``, TensorBoard scalars and progress.

    ``progress``: ``"bar"`` (tqdm), ``"lines"`` (one plain line per log step on stderr: step, loss, rate,
    ETA; what nohup, Slurm, CI and ``> log`` files want), ``"auto"`` (the bar on a terminal, lines
    otherwise) or ``"off"``. ``batch_size`` is the samples per optimizer step over all processes.
    """

    def __init__(self, output_dir: Path, *, enabled: bool, tensorboard: bool, progress, total_steps: int,
                 start_step: int, batch_size: int = 0):
        self.enabled = enabled
        self.jsonl = None
        self.writer = None
        self.bar = None
        self.lines = False
        self.total_steps, self.start_step, self.batch_size = total_steps, start_step, batch_size
        self.started = time.perf_counter()
        if not enabled:
            return
        self.jsonl = open(Path(output_dir) / LOG_FILE, "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(output_dir) / TENSORBOARD_DIR), purge_step=start_step + 1)
        progress = {True: "bar", False: "off"}.get(progress, progress)
        if progress == "auto":
            progress = "bar" if sys.stderr.isatty() else "lines"
        if progress == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
        self.lines = progress == "lines"

    def step(self, loss: float | None = None) -> None:
        """Advance the progress bar by one optimizer step (showing ``loss``)."""
        if self.bar is not None:
            self.bar.update(1)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4g}", refresh=False)

    def progress_line(self, record: dict) -> None:
        """``step 40/500 (8%) | loss 2.314 | 12.3 steps/s, 98 samples/s | ETA 0:00:37`` on stderr."""
        if not (self.enabled and self.lines):
            return
        print(format_progress(record, self.total_steps, self.start_step, time.perf_counter() - self.started,
                              self.batch_size), file=sys.stderr, flush=True)

    def log(self, record: dict) -> None:
        """One JSONL line; numbers also go to TensorBoard as ``train/<key>`` (``<key>/<name>`` for sub-dicts)."""
        if not self.enabled:
            return
        self.jsonl.write(json.dumps(record, allow_nan=True) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            step = record["step"]
            for key, value in record.items():
                if isinstance(value, dict):
                    for name, number in value.items():
                        self._scalar(f"{key}/{name}", number, step)
                elif key not in ("step", "epoch", "time"):
                    self._scalar(f"train/{key}", value, step)
            self.writer.flush()

    def _scalar(self, tag: str, value, step: int) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        """Close the bar, the TensorBoard writer and ``log.jsonl``."""
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()


def format_progress(record: dict, total_steps: int, start_step: int, elapsed: float, batch_size: int = 0) -> str:
    """The plain progress line of a log record; rate and ETA from the steps this process has run."""
    step = int(record["step"])
    parts = [f"step {step}/{total_steps} ({100 * step // max(total_steps, 1)}%)"]
    if isinstance(record.get("loss"), (int, float)):
        parts.append(f"loss {record['loss']:.4g}")
    done = step - start_step
    if done > 0 and elapsed > 0:
        rate = done / elapsed
        speed = f"{rate:.3g} steps/s" + (f", {rate * batch_size:.3g} samples/s" if batch_size else "")
        eta = datetime.timedelta(seconds=round((total_steps - step) / rate))
        parts += [speed, f"ETA {eta}"]
    return " | ".join(parts)
