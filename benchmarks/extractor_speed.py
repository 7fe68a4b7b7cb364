"""Forward+backward throughput of our default encoder vs SB3's CombinedExtractor.

Batch 256 of image (64x64x3 uint8) + text (12 token ids, vocabulary 40) +
stereo audio (2x32x8 log-mel). SB3's CombinedExtractor gets what it can take:
the image through NatureCNN (channel-first, as VecTransposeImage makes it) and
text and audio flattened. Both sides include their preprocessing (SB3's
``preprocess_obs``; ours lives inside the encoder). "ours via SB3" is our
extractor inside an SB3 policy as mbm_agent's trainer builds it
(``normalize_images=False``: SB3 only casts to float, the encoder scales). Rounds are interleaved and
the best round of each is kept, so load from other processes hurts both alike.

    python benchmarks/extractor_speed.py [--rounds 10] [--threads N] [--all-fusions]

Target: ours >= 2x SB3's samples/s.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.torch_layers import CombinedExtractor
from torch import nn

from mbm_agent import FUSION_MODES, EncoderConfig, MultimodalEncoder, MultimodalExtractor

BATCH = 256


def make_spaces() -> tuple[spaces.Dict, spaces.Dict]:
    text = spaces.Box(0, 39, (12,), dtype=np.int64)
    audio = spaces.Box(-80.0, 0.0, (2, 32, 8), dtype=np.float32)
    raw = spaces.Dict(
        {"image": spaces.Box(0, 255, (64, 64, 3), dtype=np.uint8), "text": text, "audio": audio}
    )
    sb3 = spaces.Dict(
        {"image": spaces.Box(0, 255, (3, 64, 64), dtype=np.uint8), "text": text, "audio": audio}
    )
    return raw, sb3


def make_obs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    text = torch.randint(2, 40, (BATCH, 12), generator=g)
    text[:, 8:] = 0
    return {
        "image": torch.randint(0, 256, (BATCH, 64, 64, 3), dtype=torch.uint8, generator=g),
        "text": text,
        "audio": torch.rand((BATCH, 2, 32, 8), generator=g) * -80.0,
    }


def step_fn(module: nn.Module, forward: Callable[[], torch.Tensor]) -> Callable[[], None]:
    def step() -> None:
        module.zero_grad(set_to_none=True)
        forward().square().mean().backward()

    return step


def time_it(step: Callable[[], None], iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - start) / iters


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--iters", type=int, default=3, help="steps per round")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--all-fusions", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    raw_space, sb3_space = make_spaces()
    obs = make_obs()
    sb3_obs = {**obs, "image": obs["image"].permute(0, 3, 1, 2).contiguous()}

    ours = MultimodalEncoder(raw_space)
    # As mbm_agent's trainer runs it: the policy leaves uint8 frames unscaled
    # (normalize_images=False) and the encoder scales them once, inside.
    ours_sb3 = MultimodalExtractor(sb3_space, normalize_images=False)
    combined = CombinedExtractor(sb3_space)
    candidates: dict[str, tuple[nn.Module, Callable[[], torch.Tensor]]] = {
        "ours (MultimodalEncoder, default)": (ours, lambda: ours(obs)),
        "ours via SB3 (preprocess_obs + MultimodalExtractor)": (
            ours_sb3,
            lambda: ours_sb3(preprocess_obs(sb3_obs, sb3_space, normalize_images=False)),
        ),
        "SB3 CombinedExtractor (preprocess_obs + NatureCNN + flatten)": (
            combined,
            lambda: combined(preprocess_obs(sb3_obs, sb3_space)),
        ),
    }
    if args.all_fusions:
        for fusion in FUSION_MODES:
            for text in ("gru", "bow"):
                enc = MultimodalEncoder(raw_space, EncoderConfig(fusion=fusion, text_encoder=text))
                candidates[f"ours fusion={fusion} text={text}"] = (enc, lambda e=enc: e(obs))

    steps = {name: step_fn(m, f) for name, (m, f) in candidates.items()}
    for step in steps.values():  # warm-up
        time_it(step, 2)
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(args.rounds):
        for name, step in steps.items():
            best[name] = min(best[name], time_it(step, args.iters))

    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {BATCH}, "
        f"image 64x64x3 uint8, text L=12 V=40, audio (2, 32, 8); forward+backward"
    )
    width = max(len(n) for n in steps)
    for name in steps:
        sps = BATCH / best[name]
        print(
            f"{name:<{width}}  {sps:>9.0f} samples/s  {n_params(candidates[name][0]):>9,d} params"
        )
    sb3_name = "SB3 CombinedExtractor (preprocess_obs + NatureCNN + flatten)"
    ratio = best[sb3_name] / best["ours (MultimodalEncoder, default)"]
    ratio_sb3 = best[sb3_name] / best["ours via SB3 (preprocess_obs + MultimodalExtractor)"]
    print(
        f"ratio ours / SB3 CombinedExtractor: {ratio:.2f}x (inside SB3: {ratio_sb3:.2f}x); "
        f"target >= 2x: {'PASS' if min(ratio, ratio_sb3) >= 2 else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
