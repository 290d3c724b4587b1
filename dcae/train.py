"""Rate-distortion training of a DCAE preset on a folder of images.

    python -m dcae.train --data ../shared/data/train --preset small --out runs/small

Loss is upstream's: lambda * 255^2 * MSE + bpp (estimated from likelihoods),
with Adam on the network and a second Adam on the EntropyBottleneck quantiles
(the auxiliary loss). Checkpoints are written every `--save-every` steps and
on exit; running the same command again resumes from `OUT/last.pth.tar`.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import save_checkpoint
from .config import get_config
from .model import DCAE

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}


def list_images(folder: str | Path) -> list[Path]:
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images (png/jpg/tif) under {folder}")
    return paths


class RandomCrops:
    """Random square crops with horizontal flips, from images decoded once into memory."""

    def __init__(self, paths: list[Path], crop: int, seed: int):
        from runtime.imaging import load_image

        self.crop = crop
        self.images = [im for im in (load_image(p) for p in paths) if min(im.shape[:2]) >= crop]
        if not self.images:
            raise ValueError(f"no training image is at least {crop}x{crop}")
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int) -> torch.Tensor:
        out = np.empty((size, self.crop, self.crop, 3), np.uint8)
        for k in range(size):
            im = self.images[self.rng.integers(len(self.images))]
            top = self.rng.integers(im.shape[0] - self.crop + 1)
            left = self.rng.integers(im.shape[1] - self.crop + 1)
            patch = im[top : top + self.crop, left : left + self.crop]
            out[k] = patch[:, ::-1] if self.rng.random() < 0.5 else patch
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255)


def rate_distortion_loss(out: dict, x: torch.Tensor, lmbda: float) -> dict:
    num_pixels = x.shape[0] * x.shape[2] * x.shape[3]
    bpp = sum(torch.log(l).sum() for l in out["likelihoods"].values()) / (-math.log(2) * num_pixels)
    mse = torch.mean((out["x_hat"] - x) ** 2)
    return {"loss": lmbda * 255**2 * mse + bpp, "bpp": bpp, "mse": mse}


def split_parameters(model: DCAE):
    aux = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    net = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    return net, aux


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m dcae.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder of training images (searched recursively)")
    p.add_argument("--out", required=True, help="run folder: checkpoints go here; resumes from last.pth.tar")
    p.add_argument("--preset", default="small", help="model preset (default: small)")
    p.add_argument("--steps", type=int, default=20000, help="total training steps (default: 20000)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=128, help="crop side, a multiple of 128 (default: 128)")
    p.add_argument("--lmbda", type=float, default=0.013, help="rate-distortion trade-off (default: 0.013)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--lr-decay-at", type=float, default=0.85,
                   help="fraction of --steps after which the learning rate drops 10x")
    p.add_argument("--aux-lr", type=float, default=1e-3)
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clip")
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p.parse_args(argv)


def train(args) -> Path:
    if args.crop % 128:
        raise SystemExit(f"error: --crop must be a multiple of 128, got {args.crop}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last.pth.tar"

    torch.manual_seed(args.seed)
    model = DCAE(get_config(args.preset)).train()
    net_params, aux_params = split_parameters(model)
    optimizer = torch.optim.Adam(net_params, lr=args.lr)
    aux_optimizer = torch.optim.Adam(aux_params, lr=args.aux_lr)
    step = 0
    data_seed = args.seed
    if last.exists():
        state = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(state["state_dict"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        aux_optimizer.load_state_dict(state["aux_optimizer"])
        step = state["step"]
        data_seed = args.seed + step  # a fresh but reproducible crop stream after a resume
        print(f"resuming from {last} at step {step}", file=sys.stderr)

    crops = RandomCrops(list_images(args.data), args.crop, data_seed)
    decay_step = int(args.steps * args.lr_decay_at)

    def save():
        save_checkpoint(
            last, model, preset=args.preset, step=step,
            extra={"optimizer": optimizer.state_dict(), "aux_optimizer": aux_optimizer.state_dict(),
                   "args": vars(args)},
        )

    bar = tqdm(total=args.steps, initial=step, desc="train", dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        while step < args.steps:
            lr = args.lr * (0.1 if step >= decay_step else 1.0)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = crops.batch(args.batch_size)
            optimizer.zero_grad()
            aux_optimizer.zero_grad()
            result = model(x)
            losses = rate_distortion_loss(result, x, args.lmbda)
            losses["loss"].backward()
            if args.clip > 0:
                torch.nn.utils.clip_grad_norm_(net_params, args.clip)
            optimizer.step()
            aux_loss = model.aux_loss()
            aux_loss.backward()
            aux_optimizer.step()
            step += 1
            psnr = -10 * math.log10(max(losses["mse"].item(), 1e-10))
            bar.set_postfix(loss=f"{losses['loss'].item():.3f}", bpp=f"{losses['bpp'].item():.3f}",
                            psnr=f"{psnr:.2f}", aux=f"{aux_loss.item():.1f}",
                            s_per_step=f"{(time.perf_counter() - t0) / max(1, bar.n + 1 - bar.initial):.2f}")
            bar.update(1)
            if step % args.save_every == 0:
                save()
    finally:
        bar.close()
        save()
    return last


def main(argv=None):
    args = parse_args(argv)
    try:
        path = train(args)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}")
    print(f"checkpoint: {path}")


if __name__ == "__main__":
    main()
