"""GPU check of compile_scope=region: gradients against eager (fp32, dropout 0), with and without
inductor's buffer reuse; first-step (compile) time of each. Run from the repository root on the GPU machine."""

import sys
import time

import torch

sys.path.insert(0, "src")
import lmprof.train.loop as loop
from lmprof.model import ModelArgs, Transformer
from lmprof.train.config import SystemConfig

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
dev = torch.device("cuda")
args = ModelArgs(
    vocab_size=68,
    n_layers=6,
    n_heads=6,
    d_model=384,
    d_ff=1536,
    dropout=0.0,
    bias=False,
    max_seq_len=256,
)
torch.manual_seed(0)
ref = Transformer(args).to(dev)
x = torch.randint(0, 68, (16, 256), device=dev)
t = torch.randint(0, 68, (16, 256), device=dev)
ref(x, t).sum.backward()
g0 = {n: p.grad.detach().clone() for n, p in ref.named_parameters()}
rows = []
for name, scope, reuse in (
    ("model", "model", True),
    ("region_reuse_on", "region", True),
    ("region", "region", False),
):
    torch._dynamo.reset()
    m = Transformer(args).to(dev)
    m.load_state_dict(ref.state_dict())
    m.compile_region = scope == "region"
    if reuse:
        opts = {"allow_buffer_reuse": True} if scope == "region" else {}
        cm = torch.compile(m, options=opts) if opts else torch.compile(m)
    else:
        cm = loop._compile(m, SystemConfig(compile=True, compile_scope=scope))
    t0 = time.perf_counter()
    out = cm(x, t)
    out.sum.backward()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    err = max(
        ((p.grad - g0[n]).abs().max() / g0[n].abs().max().clamp_min(1e-12)).item()
        for n, p in m.named_parameters()
    )
    worst = max(
        m.named_parameters(),
        key=lambda np_: (
            (np_[1].grad - g0[np_[0]]).abs().max() / g0[np_[0]].abs().max().clamp_min(1e-12)
        ).item(),
    )[0]
    rows.append((name, first, err, worst, abs(out.sum.item() - ref(x, t).sum.item())))
print("| variant | first step s (compile) | max grad error / max grad | worst param | loss diff |")
print("| --- | --- | --- | --- | --- |")
for r in rows:
    print(f"| {r[0]} | {r[1]:.1f} | {r[2]:.2e} | {r[3]} | {r[4]:.2e} |")
