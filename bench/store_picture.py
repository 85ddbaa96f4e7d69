"""docs/store_psnr.png: one presized image as the raw cache holds it, beside the JPEG the
store holds (`imageclf pack`'s encoding), with their PSNR and sizes, and the difference.

Usage: bench/store_picture.py IMAGE [--presize 160] [--quality 90]"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from common import ROOT

sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from imageclf.data.images import load_presized
    from imageclf.data.store import decode_hwc, encode_jpeg

    ap = argparse.ArgumentParser()
    ap.add_argument("image")
    ap.add_argument("--presize", type=int, default=160)
    ap.add_argument("--quality", type=int, default=90)
    args = ap.parse_args()
    pre = load_presized(args.image, args.presize)
    raw = np.ascontiguousarray(pre.hwc())  # (H, W, 3)
    data = encode_jpeg(raw, args.quality)
    got = decode_hwc(data)
    mse = np.mean((raw.astype(np.float64) - got) ** 2)
    psnr = 10 * np.log10(255**2 / mse)
    diff = np.abs(raw.astype(np.int16) - got).mean(2)
    fig, ax = plt.subplots(1, 3, figsize=(12, 4.4))
    ax[0].imshow(raw)
    ax[0].set_title(f"raw cache: {raw.nbytes / 1e3:.1f} KB uint8")
    ax[1].imshow(got)
    ax[1].set_title(f"store: JPEG q{args.quality} 4:4:4, {len(data) / 1e3:.1f} KB")
    im = ax[2].imshow(diff, cmap="magma", vmin=0, vmax=16)
    ax[2].set_title(f"|difference| (PSNR {psnr:.1f} dB)")
    fig.colorbar(im, ax=ax[2], fraction=0.046)
    for x in ax:
        x.axis("off")
    fig.suptitle(f"one image presized to {args.presize}: "
                 f"{raw.nbytes / len(data):.1f}x smaller in the store")
    fig.tight_layout()
    out = ROOT / "docs" / "store_psnr.png"
    fig.savefig(out, dpi=80)
    print(f"wrote {out}: PSNR {psnr:.2f} dB, {raw.nbytes} -> {len(data)} bytes")


if __name__ == "__main__":
    main()
