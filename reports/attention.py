"""Attention maps as in Figure 1 of Zhang et al. (2019), drawn from a run's npz.

Reads ``RUN_DIR/attention/step-<step>.npz`` (written by :mod:`sagan.attnmaps`, whose
docstring lists its arrays) and draws, per attention layer of G, the first image with
the query points marked and, beside it, one heat map per query: that query's weights
over the key grid, upsampled (nearest) to the image and laid over it in grey.
"""

from __future__ import annotations

import base64
import io
import zipfile
from pathlib import Path

import numpy as np

COLOURS = ("#e41a1c", "#377eb8", "#4daf4a", "#ff7f00", "#984ea3", "#a65628")
MARKERS = ("o", "s", "^", "D", "v", "P")


REQUIRED = ("images", "layers", "sizes", "query_frac")


def _read(path: Path) -> dict[str, np.ndarray] | None:
    """The npz's arrays, or ``None`` when it is missing, unreadable or has no layer."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    if not all(k in data for k in REQUIRED) or len(data["layers"]) == 0:
        return None
    if any(f"weights_{i}" not in data for i in range(len(data["layers"]))):
        return None
    return data


def _upsample(w: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour upsampling of a [h, w] map to [size, size]."""
    rows = np.arange(size) * w.shape[0] // size
    cols = np.arange(size) * w.shape[1] // size
    return w[rows][:, cols]


def attention_figure(npz_path: Path) -> dict[str, str] | None:
    """Figure 1 of the paper for one image of a run: a row per attention layer of G.

    Returns:
        ``{"src": "data:image/png;base64,...", "alt", "caption"}`` as
        ``reports.figures.curves``, or ``None`` when the file is missing or unreadable.
    """
    data = _read(Path(npz_path))
    if data is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = data["images"][0].transpose(1, 2, 0)  # R, R, 3
    res = image.shape[0]
    grey = image.astype(np.float32).mean(axis=2) / 255
    n_layers, n_q = len(data["layers"]), data["query_frac"].shape[1]
    cols = 1 + n_q
    width = 7.0
    fig, axes = plt.subplots(
        n_layers, cols, figsize=(width, width / cols * 1.2 * n_layers), dpi=80, squeeze=False
    )
    for li in range(n_layers):
        size = int(data["sizes"][li])
        # Pixel-centre coordinates: a fraction f of the image sits at f * R - 0.5.
        points = data["query_frac"][li] * res - 0.5
        weights = data[f"weights_{li}"][0]  # Q, Hk, Hk
        ax = axes[li, 0]
        ax.imshow(image, interpolation="nearest")
        for qi, (r, c) in enumerate(points):
            ax.plot(c, r, MARKERS[qi % 6], color=COLOURS[qi % 6], ms=7, mec="white", mew=1)
        ax.set_title(f"G attention at {size}x{size}", fontsize=8)
        for qi in range(n_q):
            ax = axes[li, 1 + qi]
            ax.imshow(grey, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            w = weights[qi]
            # Each map stretched to its own range; the title says how peaked it is.
            ax.imshow(_upsample(w, res), cmap="inferno", alpha=0.6, vmin=w.min(), vmax=w.max())
            r, c = points[qi]
            ax.plot(c, r, MARKERS[qi % 6], color=COLOURS[qi % 6], ms=6, mec="white", mew=1)
            ax.set_title(f"{w.shape[0]}x{w.shape[1]} keys, max {w.max() * w.size:.3g}x", fontsize=7)
        for ax in axes[li]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    step = int(data["step"]) if "step" in data else None
    at = f" at step {step}" if step is not None else ""
    sizes = ", ".join(f"{int(s)}x{int(s)}" for s in data["sizes"])
    variants = ", ".join(sorted(set(data["variants"].tolist()))) if "variants" in data else "?"
    return {
        "src": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(),
        "alt": f"G attention maps{at} for {n_q} query points, at {sizes}",
        "caption": f"{f'G step {step}; ' if step is not None else ''}{sizes}, {variants} variant",
    }
