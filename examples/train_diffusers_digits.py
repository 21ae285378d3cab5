"""Train a class-conditional diffusers ``UNet2DModel`` on digits the standard diffusers way, and save it.

    python examples/train_diffusers_digits.py OUT_DIR [--steps 1500] [--objective v_prediction|flow]
    diffbench run -d digits -m "diffusers[path=OUT_DIR]" -e shared-noise --trials 16

``--objective v_prediction`` (the default): v-prediction under the ``squaredcos_cap_v2`` schedule, noised
with ``DDPMScheduler.add_noise`` and targets from ``get_velocity``. ``--objective flow``: a rectified flow
the way diffusers trains SD3, with a ``FlowMatchEulerDiscreteScheduler`` (shift 1): sigma drawn uniformly
from the scheduler's own training sigmas, noisy = (1 - sigma) x0 + sigma eps, target eps - x0, the UNet fed
the scheduler's timestep sigma * 1000. The folder is a ``DDPMPipeline`` with that scheduler, saved with
``save_pretrained`` (``unet/``, ``scheduler/``, ``model_index.json``). diffbench reads the noise process and
the prediction type from it, and converts the model's v (or flow velocity) to epsilon itself.
Needs ``diffbench[diffusers]``.
"""

from __future__ import annotations

import argparse
import time

import torch
from diffbench_plugins.digits import Digits
from diffusers import DDPMPipeline, DDPMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel


def make_unet(num_classes: int) -> UNet2DModel:
    """A small UNet for 8x8 images: two levels (8x8, 4x4), one ResNet block each, class embeddings."""
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        num_class_embeds=num_classes,
    )


def noised(scheduler, x0: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training batch the diffusers way: (noisy input, the timestep the UNet is fed, its target)."""
    index = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],))
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        sigma = scheduler.sigmas[index].reshape(-1, 1, 1, 1)
        return (1 - sigma) * x0 + sigma * noise, scheduler.timesteps[index], noise - x0
    return scheduler.add_noise(x0, noise, index), index, scheduler.get_velocity(x0, noise, index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to save the pipeline in")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--objective", choices=("v_prediction", "flow"), default="v_prediction")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    splits = Digits().load(args.seed)  # the training split diffbench uses; images [1, 8, 8] in [-1, 1]
    x_all, y_all = splits.train_x, splits.train_y
    if args.objective == "flow":
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    else:
        scheduler = DDPMScheduler(
            num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"
        )
    unet = make_unet(splits.num_classes)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    lr_decay = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps, pct_start=0.05)
    start, running = time.perf_counter(), 0.0
    unet.train()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, x_all.shape[0], (args.batch_size,))
        x0, labels = x_all[idx], y_all[idx]
        noise = torch.randn_like(x0)
        x_t, t, target = noised(scheduler, x0, noise)
        loss = torch.nn.functional.mse_loss(unet(x_t, t, class_labels=labels).sample, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_decay.step()
        running += loss.item()
        if step % 250 == 0:
            print(f"step {step}/{args.steps}  loss {running / 250:.4f}  {time.perf_counter() - start:.0f}s", flush=True)
            running = 0.0
    unet.eval()
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(args.out)
    print(f"saved to {args.out} after {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
