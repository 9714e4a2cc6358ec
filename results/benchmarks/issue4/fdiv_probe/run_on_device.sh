#!/usr/bin/env bash
# Call 19 (H200, 2026-11-30), from the repository root with .whl/ carried: is StableMax's row
# kernel slower than softmax's because of its float32 divisions? Builds a copy of
# nanoGPT/triton_head.py whose two divisions are tl.fdiv(..., ieee_rounding=False) (approximate,
# within 2 ulp), then times both on one 8192 x 50304 bf16 chunk (StableMax, without and with
# diagnostics, three launch settings, each form twice) and compares their outputs.
# Printed per line: diagnostics, form, block, warps, ms, max |grad difference|, max relative
# difference of the per-row outputs, both against the kernel as committed.
# Run with the code of commit 72ff0e9 (the kernel of this stop); output in console.txt.
set -euo pipefail
source results/device_env.sh
sed -e 's|s = tl.maximum(x0, 0.0) + 1.0 / (1.0 - tl.minimum(x0, 0.0))|s = tl.maximum(x0, 0.0) + tl.fdiv(tl.full(x0.shape, 1.0, tl.float32), 1.0 - tl.minimum(x0, 0.0), ieee_rounding=False)|' \
    -e 's|                g = a / (d \* d)|                g = tl.fdiv(tl.full(x.shape, 1.0, tl.float32) * a, d * d, ieee_rounding=False)|' \
    nanoGPT/triton_head.py > nanoGPT/_tmp_fdiv_head.py
python3 - <<'PY'
import torch
from nanoGPT.triton_head import head_rows
from nanoGPT._tmp_fdiv_head import head_rows as fast_rows
from scripts.benchmark import time_ms
V, R = 50304, 8192
g = torch.Generator(device="cuda").manual_seed(0)
z0 = (torch.randn(R, V, device="cuda", generator=g) * 3).to(torch.bfloat16)
t = torch.randint(0, V, (R,), device="cuda", generator=g); w = torch.full((R,), 1 / R, device="cuda")
z = z0.clone()
for diag in (False, True):
    for name, f in (("ieee", head_rows), ("fast", fast_rows), ("ieee", head_rows), ("fast", fast_rows)):
        for blk, wp in ((2048, 8), (1024, 4), (4096, 8)):
            z.copy_(z0); gr, o = f(z, t, w, True, 0.0, True, None, diag, blk, wp)
            z2 = z0.clone(); gr2, o2 = head_rows(z2, t, w, True, 0.0, True, None, diag, blk, wp)
            err = (gr.float() - gr2.float()).abs().max().item()
            oerr = ((o - o2).abs() / o2.abs().clamp(min=1e-30)).nan_to_num(0).max().item()
            ms = time_ms(lambda: f(z, t, w, True, 0.0, True, None, diag, blk, wp), 5, 20)
            print(diag, name, blk, wp, round(ms, 3), err, oerr, flush=True)
PY
rm nanoGPT/_tmp_fdiv_head.py
