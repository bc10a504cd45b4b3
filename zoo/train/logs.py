"""Run logs on rank 0: JSONL (one line per log step), TensorBoard scalars and a tqdm progress bar."""
from __future__ import annotations

import json
import math
import sys
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
    def __init__(self, output_dir: Path, *, enabled: bool, tensorboard: bool, progress, total_steps: int,
                 start_step: int):
        self.enabled = enabled
        self.jsonl = None
        self.writer = None
        self.bar = None
        if not enabled:
            return
        self.jsonl = open(Path(output_dir) / LOG_FILE, "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(output_dir) / TENSORBOARD_DIR), purge_step=start_step + 1)
        show = progress if isinstance(progress, bool) else sys.stderr.isatty()
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def step(self, loss: float | None = None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4g}", refresh=False)

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
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()
