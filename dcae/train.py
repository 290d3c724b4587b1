"""Rate-distortion training of a DCAE preset on a folder of images.

    python -m dcae.train --data TRAIN_DIR --preset small --out runs/small

Loss is upstream's: lambda * 255^2 * MSE + bpp (estimated from likelihoods),
with Adam on the network and a second Adam on the EntropyBottleneck quantiles
(the auxiliary loss). Checkpoints are written every `--save-every` steps and
on exit; running the same command again resumes from `OUT/last.pth.tar`.
A new run folder starts from `--init` (default: the embedded model), so
training goes on from the shipped weights on a fresh clone.

Every `--log-every` steps a line goes to `OUT/train_log.jsonl` (mean loss,
bpp, PSNR of the training crops since the last line, seconds per step);
with `--eval-images`, every `--eval-every` steps the model is also evaluated
on those images (estimated bpp from the likelihoods with rounding, PSNR of
the reconstruction) and a line with `"eval"` is logged.

bf16 autocast (`--bf16 auto`: on a CUDA device, or a CPU with AVX512-BF16)
runs the transforms in bfloat16; likelihoods and the loss stay float32.

`--variable-rate` trains one model for a range of rates (the quality knob,
QVRF-style): rate levels with their lambdas (`--lambdas`) and a learned
quantization gain per level. Each step draws a position between the levels,
interpolates log lambda and log gain there, and trains at that pair, so the
points between levels are trained too. The levels and their gains are saved
in the checkpoint under "rate_levels".
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, save_checkpoint
from .config import get_config
from .model import DCAE

EMBEDDED_PRESET = "small"  # the preset of dcae/weights/fixture.pth.tar
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}


def list_images(folder: str | Path) -> list[Path]:
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images (png/jpg/tif) under {folder}")
    return paths


class RandomCrops:
    """Random square crops with horizontal flips, from images decoded once into memory."""

    def __init__(self, paths: list[Path], crop: int, seed: int):
        from dcae_deploy.runtime.imaging import load_image

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


# Eight levels, log-spaced by about 2.1x; the fifth (0.0185) is about the fixed-rate model's lambda.
DEFAULT_LAMBDAS = (0.0009, 0.002, 0.0042, 0.0088, 0.0185, 0.0384, 0.08, 0.16)
REFERENCE_LAMBDA = 0.0185


class RateLevels(torch.nn.Module):
    """Rate levels of a variable-rate model: a lambda and a learned log gain each.
    Gains start at sqrt(lambda / REFERENCE_LAMBDA), where the untrained knob
    already lands near each lambda's rate."""

    def __init__(self, lambdas=DEFAULT_LAMBDAS):
        super().__init__()
        lambdas = torch.tensor(sorted(float(v) for v in lambdas), dtype=torch.float64)
        if len(lambdas) < 2 or (lambdas <= 0).any():
            raise ValueError("--lambdas needs at least two positive values")
        self.register_buffer("log_lambdas", lambdas.log().float())
        self.log_gains = torch.nn.Parameter(0.5 * (lambdas / REFERENCE_LAMBDA).log().float())

    def at(self, position: float) -> tuple[float, torch.Tensor]:
        """(lambda, gain) at a position in [0, levels - 1], log-linear between levels."""
        low = min(int(position), len(self.log_gains) - 2)
        frac = position - low
        log_lambda = (1 - frac) * self.log_lambdas[low] + frac * self.log_lambdas[low + 1]
        log_gain = (1 - frac) * self.log_gains[low] + frac * self.log_gains[low + 1]
        return float(log_lambda.exp()), log_gain.exp()

    def summary(self) -> dict:
        """The checkpoint's and the bundle's record of the levels
        (`dcae_deploy.runtime.quality.RateLevels`): the quality knob puts
        quality 50 on the level nearest the fixed-rate model's lambda."""
        reference = int(torch.argmin((self.log_lambdas - math.log(REFERENCE_LAMBDA)).abs()))
        return {"lambdas": [round(float(v), 6) for v in self.log_lambdas.exp()],
                "gains": [float(v) for v in self.log_gains.detach().exp()], "reference": reference}


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
    p.add_argument("--init", default=None,
                   help="weights a new run folder starts from (default: the embedded model for its preset, "
                        "'small'; random for the others; 'none': random)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                   help="bfloat16 autocast for the transforms (auto: CUDA, or a CPU with AVX512-BF16)")
    p.add_argument("--final-crop", type=int, default=0,
                   help="crop side for the last part of training (0: keep --crop)")
    p.add_argument("--final-crop-at", type=float, default=0.8,
                   help="fraction of --steps after which --final-crop is used")
    p.add_argument("--max-seconds", type=float, default=0,
                   help="stop (with a checkpoint) after this many seconds of training (0: no limit)")
    p.add_argument("--log-every", type=int, default=50, help="steps between lines of OUT/train_log.jsonl")
    p.add_argument("--eval-images", default=None, help="folder of evaluation images (e.g. Kodak)")
    p.add_argument("--eval-every", type=int, default=500, help="steps between evaluations")
    p.add_argument("--eval-limit", type=int, default=24, help="evaluate on at most this many images")
    p.add_argument("--variable-rate", action="store_true",
                   help="train rate levels with learned gains (the quality knob) instead of one --lmbda")
    p.add_argument("--lambdas", type=lambda text: [float(v) for v in text.split(",")], default=list(DEFAULT_LAMBDAS),
                   help="comma-separated lambdas of the rate levels (default: %(default)s)")
    p.add_argument("--gain-lr", type=float, default=1e-3, help="learning rate of the levels' log gains")
    return p.parse_args(argv)


def cpu_has_bf16() -> bool:
    from dcae_deploy.runtime.cpu import cpu_flags

    return "avx512_bf16" in cpu_flags()


def use_bf16(args) -> bool:
    if args.bf16 != "auto":
        return args.bf16 == "on"
    return args.device.startswith("cuda") or (args.device == "cpu" and cpu_has_bf16())


@torch.no_grad()
def evaluate(model: DCAE, paths: list[Path], device: str, gain: torch.Tensor | None = None) -> dict:
    """Estimated bpp (likelihoods of the rounded latents) and PSNR over `paths`,
    at quantization gain `gain` (None: the fixed-rate model)."""
    from dcae_deploy.runtime.imaging import crop_to_uint8, load_image, pad_image

    from .metrics import psnr

    was_training = model.training
    model.eval()
    bpps, psnrs = [], []
    for path in paths:
        pixels = load_image(path)
        h, w = pixels.shape[:2]
        x, _ = pad_image(pixels)
        out = model(torch.from_numpy(x).to(device), gain=gain)
        bits = sum(torch.log2(l).sum() for l in out["likelihoods"].values())
        bpps.append(float(-bits) / (h * w))
        decoded = crop_to_uint8(out["x_hat"].float().clamp(0, 1).cpu().numpy(), h, w)
        psnrs.append(psnr(pixels, decoded))
    model.train(was_training)
    return {"bpp": float(np.mean(bpps)), "psnr": float(np.mean(psnrs)), "images": len(paths)}


def train(args) -> Path:
    if args.crop % 128:
        raise SystemExit(f"error: --crop must be a multiple of 128, got {args.crop}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last.pth.tar"

    torch.manual_seed(args.seed)
    step = 0
    model = DCAE(get_config(args.preset))
    init_path = args.init or (str(DEFAULT_CHECKPOINT) if args.preset == EMBEDDED_PRESET else "none")
    if not last.exists() and init_path != "none":
        init = load_checkpoint(init_path)
        if init.config != model.config:
            raise ValueError(f"--init {init_path} is not a {args.preset} model")
        model.load_state_dict(init.state_dict(), strict=False)
        # Steps count on from the initial weights' own training.
        step = int(torch.load(init_path, map_location="cpu", weights_only=False).get("step") or 0)
        print(f"starting from {init_path} (step {step})", file=sys.stderr)
    model = model.to(args.device).train()
    net_params, aux_params = split_parameters(model)
    levels = RateLevels(args.lambdas).to(args.device) if args.variable_rate else None
    groups = [{"params": net_params, "lr": args.lr}]
    if levels is not None:
        groups.append({"params": [levels.log_gains], "lr": args.gain_lr, "fixed_lr": True})
    optimizer = torch.optim.Adam(groups)
    aux_optimizer = torch.optim.Adam(aux_params, lr=args.aux_lr)
    data_seed = args.seed
    if last.exists():
        state = torch.load(last, map_location=args.device, weights_only=False)
        model.load_state_dict(state["state_dict"], strict=False)
        if (levels is None) != ("rate_levels_state" not in state):
            raise ValueError(f"{last} was {'not ' if levels is not None else ''}trained with --variable-rate")
        if levels is not None:
            levels.load_state_dict(state["rate_levels_state"])
        optimizer.load_state_dict(state["optimizer"])
        aux_optimizer.load_state_dict(state["aux_optimizer"])
        step = state["step"]
        data_seed = args.seed + step  # a fresh but reproducible crop stream after a resume
        print(f"resuming from {last} at step {step}", file=sys.stderr)

    final_crop = args.final_crop or args.crop
    if final_crop % 128:
        raise ValueError(f"--final-crop must be a multiple of 128, got {final_crop}")
    paths = list_images(args.data)
    crops = RandomCrops(paths, args.crop, data_seed)
    final_crop_step = int(args.steps * args.final_crop_at) if final_crop != args.crop else args.steps
    decay_step = int(args.steps * args.lr_decay_at)
    eval_paths = list_images(args.eval_images)[: args.eval_limit] if args.eval_images else []
    bf16 = use_bf16(args)
    device_type = "cuda" if args.device.startswith("cuda") else "cpu"
    log_path = out / "train_log.jsonl"
    window = {"loss": 0.0, "bpp": 0.0, "psnr": 0.0, "n": 0, "t": time.perf_counter()}

    def log(record: dict) -> None:
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def save():
        extra = {"optimizer": optimizer.state_dict(), "aux_optimizer": aux_optimizer.state_dict(),
                 "args": vars(args)}
        if levels is not None:
            extra["rate_levels"] = levels.summary()
            extra["rate_levels_state"] = levels.state_dict()
        save_checkpoint(last, model, preset=args.preset, step=step, extra=extra)

    def log_evaluation():
        if levels is None:
            log({"step": step, "eval": evaluate(model, eval_paths, args.device)})
            return
        for level in range(len(levels.log_gains)):
            lmbda, gain = levels.at(level)
            log({"step": step, "level": level, "lmbda": round(lmbda, 6), "gain": round(float(gain.detach()), 5),
                 "eval": evaluate(model, eval_paths, args.device, gain.detach())})

    rng = random.Random(args.seed + step)
    if eval_paths and not last.exists():
        # Where the initial weights stand, in the same terms as the later evaluations.
        log_evaluation()
    bar = tqdm(total=args.steps, initial=step, desc="train", dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        while step < args.steps and not (args.max_seconds and time.perf_counter() - t0 > args.max_seconds):
            lr = args.lr * (0.1 if step >= decay_step else 1.0)
            for group in optimizer.param_groups:
                if not group.get("fixed_lr"):
                    group["lr"] = lr
            if step >= final_crop_step and crops.crop != final_crop:
                crops = RandomCrops(paths, final_crop, args.seed + step)
            x = crops.batch(args.batch_size).to(args.device)
            optimizer.zero_grad()
            aux_optimizer.zero_grad()
            lmbda, gain = args.lmbda, None
            if levels is not None:
                lmbda, gain = levels.at(rng.uniform(0, len(levels.log_gains) - 1))
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                result = model(x, gain=gain)
            result["x_hat"] = result["x_hat"].float()
            losses = rate_distortion_loss(result, x, lmbda)
            losses["loss"].backward()
            if args.clip > 0:
                torch.nn.utils.clip_grad_norm_(net_params, args.clip)
            optimizer.step()
            aux_loss = model.aux_loss()
            aux_loss.backward()
            aux_optimizer.step()
            step += 1
            psnr = -10 * math.log10(max(losses["mse"].item(), 1e-10))
            for key, value in (("loss", losses["loss"].item()), ("bpp", losses["bpp"].item()), ("psnr", psnr)):
                window[key] += value
            window["n"] += 1
            if step % args.log_every == 0:
                now = time.perf_counter()
                log({"step": step, "lr": lr, "lmbda": "levels" if levels is not None else args.lmbda, "crop": crops.crop, "bf16": bf16,
                     **{k: round(window[k] / window["n"], 4) for k in ("loss", "bpp", "psnr")},
                     "s_per_step": round((now - window["t"]) / window["n"], 3)})
                window.update(loss=0.0, bpp=0.0, psnr=0.0, n=0, t=now)
            if eval_paths and step % args.eval_every == 0:
                log_evaluation()
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


def _stop_on_sigterm(signum, frame):
    # `kill` (SIGTERM) ends training like Ctrl-C: the finally block saves.
    raise KeyboardInterrupt


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        path = train(args)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}")
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: train's finally block has saved the checkpoint.
        print(f"stopped; checkpoint: {Path(args.out) / 'last.pth.tar'} (the same command resumes)", file=sys.stderr)
        raise SystemExit(130) from None
    print(f"checkpoint: {path}")


if __name__ == "__main__":
    main()
