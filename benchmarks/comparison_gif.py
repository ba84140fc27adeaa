"""Side-by-side GIF of the comparison's methods on one task, each with the tracking camera.

    MUJOCO_GL=egl python benchmarks/comparison_gif.py HalfCheetah-v5 \
        [--results results/comparison] [--seed 100] [--methods iso_odetoode,linear,...] \
        [--frames 120] [--every 2] [--size 200x150] [--out results/comparison.gif]

Each tile is the start (--frames x --every env steps) of the first evaluation episode (the
trainer's evaluation seed) of the run `<results>/<task>/<method>/s<seed>` (its latest
checkpoint), rendered by `odepolicy evaluate`'s own video path and labelled with the method's
name and the run's final evaluation return (progress.csv); a tile whose episode ends first
holds its last frame. Tiles are laid out
three to a row in the comparison's method order. The GIF is kept under --max-bytes by
dropping every other frame until it fits.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _tile(frames: list[np.ndarray], label: str) -> list[np.ndarray]:
    from PIL import Image, ImageDraw

    out = []
    for frame in frames:
        image = Image.fromarray(frame[..., :3])
        draw = ImageDraw.Draw(image)
        draw.rectangle([0, 0, image.width, 14], fill=(255, 255, 255))
        draw.text((3, 1), label, fill=(0, 0, 0))
        out.append(np.asarray(image))
    return out


def render(run: Path, gif: Path, size: tuple[int, int], frames: int, every: int):
    """The frames of the start of the run's first evaluation episode, and its final return."""
    import imageio.v3 as iio

    from odepolicy.evaluate import evaluate_checkpoint
    from odepolicy.rundir import RunDir

    evaluate_checkpoint(
        run, episodes=1, horizon=frames * every, video=gif, size=size, video_every=every
    )
    return list(iio.imread(gif, index=None)), RunDir(run).progress.final_eval()


def grid(tiles: list[list[np.ndarray]], columns: int) -> list[np.ndarray]:
    """Tiles side by side, as long as the longest; a tile whose episode ended (a Humanoid
    that fell) holds its last frame."""
    n = max(len(t) for t in tiles)
    h, w = tiles[0][0].shape[:2]
    rows = -(-len(tiles) // columns)
    out = []
    for k in range(n):
        canvas = np.full((rows * h, columns * w, 3), 255, dtype=np.uint8)
        for i, frames in enumerate(tiles):
            r, c = divmod(i, columns)
            frame = frames[min(k, len(frames) - 1)]
            canvas[r * h : (r + 1) * h, c * w : (c + 1) * w] = frame[..., :3]
        out.append(canvas)
    return out


def write_gif(frames: list[np.ndarray], out: Path, max_bytes: int, fps: float) -> int:
    import imageio.v3 as iio

    while True:
        iio.imwrite(out, frames, duration=1000 / fps, loop=0)
        size = out.stat().st_size
        if size <= max_bytes or len(frames) < 8:
            return size
        frames, fps = frames[::2], fps / 2  # the same seconds, half the frames


def main(argv: list[str] | None = None) -> int:
    from odepolicy.plotting import METHODS, method_style

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("task", help="task folder under --results, e.g. HalfCheetah-v5")
    p.add_argument("--results", default=str(ROOT / "results" / "comparison"))
    p.add_argument("--seed", type=int, default=100, help="evaluation seed of the runs to show")
    p.add_argument("--methods", help="comma-separated methods (default: every finished one)")
    p.add_argument("--frames", type=int, default=120, help="frames per tile")
    p.add_argument("--every", type=int, default=2, help="render every k-th env step")
    p.add_argument("--size", default="200x150", help="tile size WxH")
    p.add_argument("--fps", type=float, default=10.0, help="frames per second of the GIF")
    p.add_argument("--max-bytes", type=int, default=1_000_000)
    p.add_argument("--out", default=str(ROOT / "results" / "comparison.gif"))
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    folder = Path(args.results) / args.task
    if args.methods:
        methods = args.methods.split(",")
    else:
        found = {d.name for d in folder.iterdir() if (d / f"s{args.seed}").is_dir()}
        methods = [m for m in METHODS if m in found] + sorted(found - set(METHODS))
    if not methods:
        print(f"no run s{args.seed} under {folder}", file=sys.stderr)
        return 2
    tiles = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            run = folder / method / f"s{args.seed}"
            frames, ret = render(run, Path(tmp) / f"{method}.gif", (width, height), args.frames,
                                 args.every)  # fmt: skip
            label = f"{method_style(method)['label']}: {ret:.0f}"
            tiles.append(_tile(frames, label))
            print(f"{method}: return {ret:.1f}, {len(frames)} frames", flush=True)
    frames = grid(tiles, columns=min(3, len(tiles)))
    out = Path(args.out)
    size = write_gif(frames, out, args.max_bytes, fps=args.fps)
    print(f"wrote {out} ({size:,} bytes, {len(methods)} methods)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
