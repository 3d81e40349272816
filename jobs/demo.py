"""Built-in demo: run FCN-8s on a generated image (grows into the full pipeline demo)."""

from __future__ import annotations

import argparse
import time

import torch

from fcn_model import FCN8s


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--size", type=int, default=777)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = FCN8s(4, in_channels=3, width=0.25).eval()
    image = torch.randn(1, 3, args.size, args.size + 223)
    start = time.perf_counter()
    with torch.inference_mode():
        labels = model(image).argmax(1)
    seconds = time.perf_counter() - start
    print(f"labels {tuple(labels.shape[1:])} for image {tuple(image.shape[2:])} in {seconds:.2f} s")


if __name__ == "__main__":
    main()
