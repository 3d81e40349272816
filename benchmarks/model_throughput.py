"""FCN-8s throughput: fp32 against bf16, on the CPU (and a GPU when there is one).

Prints tiles/s and megapixels/s per precision and device, the speed ratio to fp32
on the same device, and the share of pixels whose label (argmax) agrees with fp32.

    python benchmarks/model_throughput.py --width 0.25 --tile-size 256 --batch-size 4
"""

from __future__ import annotations

import argparse
import time

import torch

from fcnrs.fcn_model import FCN8s


def _run(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    with torch.inference_mode():
        out = model(x)  # warm-up (allocations, kernel selection)
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            out = model(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return elapsed / repeats, out.float().argmax(1).cpu()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--bands", type=int, default=3)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    base = FCN8s(args.classes, in_channels=args.bands, width=args.width).eval()
    with torch.no_grad():  # spread the classes so agreement is not trivially 100%
        base.score_fr.bias.copy_(torch.linspace(-0.05, 0.05, args.classes))
    x = torch.randn(args.batch_size, args.bands, args.tile_size, args.tile_size)
    pixels = args.batch_size * args.tile_size**2

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(
        f"FCN-8s width={args.width} tile={args.tile_size} batch={args.batch_size} "
        f"bands={args.bands} classes={args.classes} torch={torch.__version__} "
        f"threads={torch.get_num_threads()}"
    )
    header = f"{'device':<6} {'precision':<10} {'tiles/s':>9} {'MP/s':>8} {'speed':>7} {'agree':>8}"
    print(header)
    for device in devices:
        ref_labels = None
        ref_time = None
        for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            model = FCN8s(args.classes, in_channels=args.bands, width=args.width).eval()
            model.load_state_dict(base.state_dict())
            model = model.to(device=device, dtype=dtype)
            seconds, labels = _run(model, x.to(device=device, dtype=dtype), args.repeats)
            if ref_labels is None:
                ref_labels, ref_time = labels, seconds
            agree = (labels == ref_labels).float().mean().item()
            print(
                f"{device:<6} {precision:<10} {args.batch_size / seconds:>9.2f} "
                f"{pixels / seconds / 1e6:>8.3f} {ref_time / seconds:>6.2f}x {agree:>8.2%}"
            )


if __name__ == "__main__":
    main()
