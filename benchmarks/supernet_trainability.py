"""Does a supernet train when a different child runs every step? A diagnostic for one-shot search.

Trains the MnasNet space's supernet (``effml.search.oneshot.Supernet``) on the embedded digits at
32 px, one child per step as TuNAS does, with only the decisions named by ``--vary`` left free (the
others at the base network's value), and prints the sampled children's accuracy on their training
batches per window of 50 steps. ``--op-warmup F`` runs every op of a block (averaged) with a
probability decaying from 1 to 0 over the first F of the steps and widens the filters likewise
(TuNAS's warm-ups, ``TunasStep.draw``). A supernet whose children stay at chance cannot rank them.

    python benchmarks/supernet_trainability.py --vary none                 # one member: the ceiling
    python benchmarks/supernet_trainability.py --vary kind --op-warmup 0.5
    python benchmarks/supernet_trainability.py --vary all --optimizer sgd
    python benchmarks/supernet_trainability.py --vary expand_ratio --options expand_ratio=3,6
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from effml.search.oneshot.supernet import Supernet
from effml.search.oneshot.tunas import TunasStep
from effml.search.spaces.catalog import mnasnet_space
from effml.search.spaces.search_space import SearchSpace
from effml.search.study.config import TunasConfig
from effml.train.objective import classification_loss


def digits(resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded digits (scikit-learn's), 3 channels, standardised, at ``resolution``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None].repeat(1, 3, 1, 1) / 16
    x = torch.nn.functional.interpolate(x, size=resolution, mode="bilinear")
    return (x - x.mean()) / x.std(), torch.tensor(d.target)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vary", default="all", help="decision fields left free, comma-separated (kind, expand_ratio, "
                                                  "kernel_size, se_ratio, out_channels, repeats), all, or none")
    p.add_argument("--rows", type=int, nargs="*", default=None, help="only these block rows vary (default: all)")
    p.add_argument("--options", nargs="*", default=[], metavar="FIELD=A,B",
                   help="narrow a decision's options in every row, e.g. expand_ratio=3,6")
    p.add_argument("--op-warmup", type=float, default=0.0)
    p.add_argument("--kernels", choices=("shared", "separate"), default="shared",
                   help="a smaller kernel is the centre of the largest (BigNAS) or has its own weights (TuNAS)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    full = mnasnet_space(10, 32)
    fields = None if args.vary == "all" else set() if args.vary == "none" else set(args.vary.split(","))
    narrowed = {field: tuple(int(v) if v.lstrip("-").isdigit() else float(v) for v in values.split(","))
                for field, values in (o.split("=", 1) for o in args.options)}
    choices = tuple(dataclasses.replace(c, options=narrowed.get(c.field, c.options)) for c in full.choices
                    if (fields is None or c.field in fields) and (args.rows is None or c.stage in args.rows))
    space = SearchSpace(full.name, full.base, choices)
    net = Supernet(space, kernels=args.kernels).train()
    opt = (torch.optim.AdamW(net.parameters(), lr=0.002) if args.optimizer == "adamw"
           else torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9))
    warm = args.op_warmup
    draws = TunasStep(space, TunasConfig(op_warmup=warm, filter_warmup=warm, delay=max(warm, 0.25)),
                      lambda spec: 1.0, 1.0, seed=args.seed)
    x, y = digits(32)
    gen = torch.Generator().manual_seed(args.seed)
    hits: list[float] = []
    for step in range(args.steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        d = draws.draw(step, args.steps)
        all_ops = {at: {k: net.child_spec(v) for k, v in variants.items()} for at, variants in d.all_ops.items()}
        logits = net(x[idx], child=net.child_spec(d.train_spec), all_ops=all_ops or None)
        loss = classification_loss(logits, y[idx], 0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hits.append((logits.argmax(1) == y[idx]).float().mean().item())
        if (step + 1) % 50 == 0:
            print(f"vary {args.vary} {' '.join(args.options)} kernels {args.kernels} op-warmup {warm} {args.optimizer}: "
                  f"steps {step - 48}-{step + 1} "
                  f"children's batch accuracy {100 * sum(hits[-50:]) / 50:.1f}%", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
