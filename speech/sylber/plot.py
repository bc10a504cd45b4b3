"""A picture of one segmentation: waveform, feature norm, threshold, boundaries, token ids."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_segmentation(wave, result, path: str | Path, *, sample_rate: int = 16000, title: str | None = None) -> Path:
    """Draw ``result`` (a SegmentResult of ``wave``) into a PNG at ``path`` (matplotlib, Agg backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    seconds = np.arange(wave.size) / sample_rate
    norms = result.norms.numpy()
    frame_rate = 50.0
    frame_centres = (np.arange(norms.size) + 0.5) / frame_rate  # frame i covers [i*20 ms, i*20 ms + 25 ms)
    segments = result.segments.numpy()
    tokens = None if result.tokens is None else result.tokens.numpy()

    fig = Figure(figsize=(max(8.0, 2.0 + 1.6 * result.duration), 5.0))
    FigureCanvasAgg(fig)
    ax_wave, ax_norm = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1.0, 1.2]})
    ax_wave.plot(seconds, wave, color="0.35", linewidth=0.5)
    ax_wave.set_ylabel("waveform")
    ax_norm.plot(frame_centres, norms, color="tab:blue", linewidth=1.2, label="feature norm")
    ax_norm.axhline(result.norm_threshold, color="tab:red", linestyle="--", linewidth=1.0,
                    label=f"norm threshold {result.norm_threshold:.2f}")
    ax_norm.set_ylabel("||h_t||")
    ax_norm.set_xlabel("time (s)")
    top = float(max(norms.max(initial=0.0), result.norm_threshold)) * 1.15 or 1.0
    ax_norm.set_ylim(0.0, top)
    for index, (start, end) in enumerate(segments):
        shade = "tab:orange" if index % 2 == 0 else "tab:green"
        for axis in (ax_wave, ax_norm):
            axis.axvspan(start, end, color=shade, alpha=0.12, linewidth=0)
            axis.axvline(start, color="k", linewidth=0.7)
            axis.axvline(end, color="k", linewidth=0.4, linestyle=":")
        label = str(int(tokens[index])) if tokens is not None else str(index)
        ax_norm.text((start + end) / 2, top * 0.95, label, ha="center", va="top", fontsize=8,
                     rotation=90 if len(segments) > 3 * max(result.duration, 1e-3) else 0)
    ax_norm.legend(loc="lower right", fontsize=8)
    what = "token ids" if tokens is not None else "segment index (no codebook)"
    ax_wave.set_title(title or f"Sylber: {len(segments)} segments in {result.duration:.2f} s; labels = {what}",
                      fontsize=10)
    ax_norm.set_xlim(0.0, max(result.duration, seconds[-1] if seconds.size else 0.0))
    fig.tight_layout()
    path = Path(path)
    from zoo.files import atomic_open

    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, dpi=120, format=path.suffix.lstrip(".").lower() or "png")
    return path
