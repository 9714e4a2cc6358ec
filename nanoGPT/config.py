"""Run and grid configuration: typed, validated data with every default in one place.

A run config is a TOML file whose sections mirror the dataclasses below; anything it leaves
out takes the default written here. ``key=value`` overrides (``optim.lr=3e-3``, or ``lr=3e-3``
when the key name is unique) are applied on top. Every error names the offending key.

A grid config (``configs/grids/*.toml``) expands scales × methods × learning rates × γ ×
seeds into one run config per run, named with the published scheme
``wor40A-16M-13p1B-100k-bs64-lr10-baseline-g0e+00-s1``.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w

from .mitigations import MethodError, Mitigation
from .model import GPTConfig, get_scale


class ConfigError(ValueError):
    """A bad config: the message names the key and what is wrong."""


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {msg}")


# ----------------------------------------------------------------------------- schema
@dataclass
class ModelSection:
    scale: str = "16M"              # 16M/29M/57M/109M/221M (or letters 4/6/8/A/C), 'tiny' for tests
    vocab_size: int = 50304         # GPT-2's 50257 padded to a multiple of 64
    tie_weights: bool = False       # the published grid is untied
    xavier_init: bool = True
    float32_logits: bool = False    # LM-head logits kept in float32 instead of rounded to bf16 (same bf16 products):
                                    # tells whether a method's effect is bf16 rounding of the logits


@dataclass
class MethodSection:
    name: str = "baseline"          # baseline, z-loss, mu-loss, mu-centering, stablemax, orthograd; combine with '+'
    gamma: float = 0.0              # strength of z-loss / mu-loss; explicit in every run (0 for the others)
    orthograd_skip: list[str] = field(default_factory=list)  # parameter-name substrings ⊥Grad leaves alone


@dataclass
class OptimSection:
    lr: float = 1e-3                # peak learning rate
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    independent_weight_decay: bool = False  # decay decoupled from lr: AdamW gets wd/lr, so the step decays by wd·lr_t/lr
    grad_clip: float = 1.0          # global gradient-norm clip; 0 disables


@dataclass
class ScheduleSection:
    max_steps: int = 100_000        # optimizer steps
    warmup_steps: int = 5_000       # linear warmup from 0 to lr
    min_lr: float = 1e-5            # cosine decay reaches it at the last step


@dataclass
class BatchSection:
    batch_size: int = 64            # sequences per optimizer step, all GPUs together
    micro_batch_size: int = 0       # 0: the largest divisor of the per-GPU batch not above the scale's maximum
    seq_len: int = 2048


@dataclass
class DataSection:
    train: str = "data/fineweb100B/fineweb_train_*.bin"  # glob of llm.c/modded-nanogpt shards
    val: str = "data/fineweb100B/fineweb_val_*.bin"
    shard_seed: int = 0             # 0: shards in sorted order; otherwise a permutation of them seeded by this
    val_tokens: int = 10_485_760    # fixed validation budget (predicted tokens), the same for every run
    val_batch_size: int = 16        # sequences per validation forward pass


@dataclass
class LogSection:
    log_interval: int = 10          # steps between log lines (each needs a host-device sync)
    checkpoint_interval: int = 1000 # steps between checkpoints; the last step always checkpoints
    spike_factor: float = 0.0       # a loss above this × its recent average (EMA, ~100 steps) counts as diverged; 0: only NaN/Inf do
    wandb: bool = False             # also mirror the log lines to Weights & Biases (nanoGPT/tracking.py); local logs are always written
    wandb_project: str = "stable-pretraining"


@dataclass
class SystemSection:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"   # auto: bf16 autocast on GPU, float32 on CPU
    compile: Literal["auto", "on", "off"] = "auto"             # auto: torch.compile on GPU only


@dataclass
class RunConfig:
    name: str = ""                  # run name; empty: derived from the fields (published scheme)
    out_dir: str = "output/default" # the run writes into out_dir/name
    seed: int = 1
    model: ModelSection = field(default_factory=ModelSection)
    method: MethodSection = field(default_factory=MethodSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    batch: BatchSection = field(default_factory=BatchSection)
    data: DataSection = field(default_factory=DataSection)
    log: LogSection = field(default_factory=LogSection)
    system: SystemSection = field(default_factory=SystemSection)

    # --------------------------------------------------------------- derived
    @property
    def mitigation(self) -> Mitigation:
        return Mitigation.from_spec(self.method.name, self.method.gamma)

    def gpt_config(self) -> GPTConfig:
        return GPTConfig.from_scale(self.model.scale, vocab_size=self.model.vocab_size, block_size=self.batch.seq_len,
                                    tie_weights=self.model.tie_weights, xavier_init=self.model.xavier_init)

    @property
    def tokens(self) -> int:
        return self.schedule.max_steps * self.batch.batch_size * self.batch.seq_len

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def dumps(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def validate(self) -> "RunConfig":
        """Range checks that the types alone do not express; fills in the derived run name."""
        _check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        try:
            get_scale(self.model.scale)
        except KeyError as e:
            raise ConfigError(f"config key 'model.scale': {e.args[0]}") from None
        _check(self.model.vocab_size >= 50257, "model.vocab_size", f"must hold GPT-2's 50257 tokens, got {self.model.vocab_size}")
        try:
            self.mitigation
        except MethodError as e:
            raise ConfigError(f"config key 'method.{e.key}': {e}") from None
        # A skip list without ⊥Grad would do nothing: a typo'd method name must not pass silently.
        _check(not self.method.orthograd_skip or self.mitigation.orthograd, "method.orthograd_skip",
               f"only applies with orthograd in method.name, got {self.method.name!r}")
        o, s, b, d, lg = self.optim, self.schedule, self.batch, self.data, self.log
        _check(math.isfinite(o.lr) and o.lr > 0, "optim.lr", f"must be a positive number, got {o.lr}")
        _check(0 <= o.beta1 < 1, "optim.beta1", f"must be in [0, 1), got {o.beta1}")
        _check(0 <= o.beta2 < 1, "optim.beta2", f"must be in [0, 1), got {o.beta2}")
        _check(o.eps > 0, "optim.eps", f"must be > 0, got {o.eps}")
        _check(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
        _check(o.grad_clip >= 0, "optim.grad_clip", f"must be >= 0 (0 disables), got {o.grad_clip}")
        _check(0 < s.max_steps <= 10**9, "schedule.max_steps", f"must be in [1, 1e9], got {s.max_steps}")
        _check(0 <= s.warmup_steps <= s.max_steps, "schedule.warmup_steps", f"must be in [0, max_steps={s.max_steps}], got {s.warmup_steps}")
        _check(0 <= s.min_lr <= o.lr, "schedule.min_lr", f"must be in [0, optim.lr={o.lr}], got {s.min_lr}")
        _check(0 < b.batch_size <= 10**6, "batch.batch_size", f"must be in [1, 1e6], got {b.batch_size}")
        _check(b.micro_batch_size >= 0, "batch.micro_batch_size", f"must be >= 0 (0 = automatic), got {b.micro_batch_size}")
        _check(b.micro_batch_size == 0 or b.batch_size % b.micro_batch_size == 0, "batch.micro_batch_size",
               f"must divide batch.batch_size={b.batch_size}, got {b.micro_batch_size}")
        _check(0 < b.seq_len <= 10**6, "batch.seq_len", f"must be in [1, 1e6], got {b.seq_len}")
        _check(d.val_tokens > 0, "data.val_tokens", f"must be > 0, got {d.val_tokens}")
        _check(d.val_batch_size > 0, "data.val_batch_size", f"must be > 0, got {d.val_batch_size}")
        _check(lg.log_interval > 0, "log.log_interval", f"must be > 0, got {lg.log_interval}")
        _check(lg.checkpoint_interval > 0, "log.checkpoint_interval", f"must be > 0, got {lg.checkpoint_interval}")
        _check(lg.spike_factor == 0 or (math.isfinite(lg.spike_factor) and lg.spike_factor > 1), "log.spike_factor",
               f"must be 0 (off) or a finite factor > 1, got {lg.spike_factor}")
        if not self.name:
            self.name = run_name(self)
        _check("/" not in self.name and self.name not in (".", ".."), "name", f"must be a plain file name, got {self.name!r}")
        return self


# ----------------------------------------------------------------------------- typed loading
def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check one value against its annotated type; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        _check(value in choices, key, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        _check(isinstance(value, list), key, f"must be a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key, f"must be a number, got {type(value).__name__} {value!r}")
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"config key '{key}': {value} is out of range for a number") from None
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, f"must be an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        _check(isinstance(value, bool), key, f"must be true or false, got {type(value).__name__} {value!r}")
        return value
    if tp is str:
        _check(isinstance(value, str), key, f"must be a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} for {key}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            where = f"section [{prefix.rstrip('.')}]" if prefix else "the top level"
            raise ConfigError(f"config key '{prefix}{key}': unknown key in {where}; known keys: {', '.join(sorted(known))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp, value, key = hints[f.name], data[f.name], prefix + f.name
        if dataclasses.is_dataclass(tp):
            _check(isinstance(value, dict), key, f"must be a section (table), got {value!r}")
            kwargs[f.name] = _build(tp, value, key + ".")
        else:
            kwargs[f.name] = _coerce(value, tp, key)
    return cls(**kwargs)


def _parse_value(text: str, tp: Any) -> Any:
    """A TOML value ('3e-3', 'true', '[1, 2]'); for string keys the text itself, so that
    model.scale=4 means the scale letter '4', not the integer 4."""
    is_str = tp is str or (typing.get_origin(tp) is Literal and all(isinstance(c, str) for c in typing.get_args(tp)))
    if is_str and not text.strip().startswith(('"', "'")):
        return text.strip()
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except ValueError:  # TOMLDecodeError, or an integer too long to convert
        return text


def _sections() -> dict[str, dict[str, Any]]:
    """Section name -> {key: annotated type}; the top-level keys under ''."""
    hints = typing.get_type_hints(RunConfig)
    out: dict[str, dict[str, Any]] = {"": {}}
    for name, tp in hints.items():
        if dataclasses.is_dataclass(tp):
            out[name] = typing.get_type_hints(tp)
        else:
            out[""][name] = tp
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` (or ``key=value`` where the key is unique) to raw config data."""
    sections = _sections()
    top = sections.pop("")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. optim.lr=3e-3")
        key, text = item.split("=", 1)
        key = key.strip()
        if "." not in key:
            owners = [s for s, keys in sections.items() if key in keys] + ([""] if key in top else [])
            if len(owners) != 1:
                hint = "unknown key" if not owners else "ambiguous, write " + " or ".join(
                    f"{s}.{key}" if s else f"{key} at the top level (in the file)" for s in owners)
                raise ConfigError(f"config key '{key}': {hint}")
            key = f"{owners[0]}.{key}" if owners[0] else key
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key '{key}': '{p}' is not a section")
        tp = sections.get(parents[0], {}).get(leaf) if len(parents) == 1 else top.get(leaf)
        node[leaf] = _parse_value(text, tp)
    return data


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # TOMLDecodeError is a ValueError
        raise ConfigError(f"config file {path} is not valid UTF-8 TOML: {e}") from None


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    return _build(RunConfig, data).validate()


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """The run config of a TOML file (or the defaults) with key=value overrides applied."""
    data = load_toml(path) if path is not None else {}
    return config_from_dict(apply_overrides(data, list(overrides)))


# ----------------------------------------------------------------------------- run names
def _short(x: float) -> str:
    return f"{x:g}".replace(".", "p")


def format_tokens(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            v = n / div
            return (f"{v:.1f}" if v < 100 else f"{v:.0f}").replace(".0", "").replace(".", "p") + unit
    return str(n)


def format_steps(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def run_name(cfg: RunConfig) -> str:
    """The published scheme: wor{scale}0{method letters}-{size}-{tokens}-{steps}-bs{B}-lr{lr/1e-4}-{method}-g{γ}-s{seed}.
    Tied-embedding runs use lower-case method letters, as the published tied variants do; runs
    with float32 logits end in -f32logits (the published runs have bf16 ones)."""
    scale, mit = get_scale(cfg.model.scale), cfg.mitigation
    letters = mit.letters.lower() if cfg.model.tie_weights else mit.letters
    return (f"wor{scale.letter}0{letters}-{scale.name}-{format_tokens(cfg.tokens)}-{format_steps(cfg.schedule.max_steps)}"
            f"-bs{cfg.batch.batch_size}-lr{_short(round(cfg.optim.lr / 1e-4, 6))}-{mit.name}-g{mit.gamma:.0e}-s{cfg.seed}"
            + ("-f32logits" if cfg.model.float32_logits else ""))


# ----------------------------------------------------------------------------- grids
@dataclass
class GridSection:
    name: str = "grid"
    scales: list[str] = field(default_factory=lambda: ["16M"])
    methods: list[str] = field(default_factory=lambda: ["baseline"])
    learning_rates: list[float] = field(default_factory=lambda: [1e-3])
    seeds: list[int] = field(default_factory=lambda: [1])
    out_dir: str = ""               # default: output/<grid name>


def load_grid(path: str | Path) -> tuple[GridSection, dict[str, list[float]], dict[str, Any]]:
    """A grid file: [grid] (the axes), [gamma] (γ values per method), [base] (a run config for every run)."""
    raw = load_toml(path)
    unknown = set(raw) - {"grid", "gamma", "base"}
    if unknown:
        raise ConfigError(f"grid file {path}: unknown section(s) {', '.join(sorted(unknown))}; expected [grid], [gamma], [base]")
    for section, value in raw.items():
        _check(isinstance(value, dict), section, f"must be a section ([{section}]) in grid file {path}, got {value!r}")
    grid = _build(GridSection, raw.get("grid", {}), "grid.")
    gammas = {m: _coerce(v if isinstance(v, list) else [v], list[float], f"gamma.{m}") for m, v in raw.get("gamma", {}).items()}
    return grid, gammas, raw.get("base", {})


def expand_grid(path: str | Path) -> list[RunConfig]:
    """Every run of a grid file, validated, in a stable order (scale, method, lr, γ, seed)."""
    grid, gammas, base = load_grid(path)
    for s in grid.scales:
        try:
            get_scale(s)
        except KeyError as e:
            raise ConfigError(f"config key 'grid.scales': {e.args[0]}") from None
    for m in gammas:
        _check(m in grid.methods, f"gamma.{m}", f"γ given for a method the grid does not run ({', '.join(grid.methods)})")
    runs = []
    for scale, method, lr in itertools.product(grid.scales, grid.methods, grid.learning_rates):
        for gamma, seed in itertools.product(gammas.get(method, [0.0]), grid.seeds):
            data = _deep_merge(base, {"model": {"scale": scale}, "method": {"name": method, "gamma": gamma},
                                      "optim": {"lr": lr}, "seed": seed, "out_dir": grid.out_dir or f"output/{grid.name}"})
            runs.append(config_from_dict(data))
    names = [r.name for r in runs]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConfigError(f"grid file {path}: runs with identical names {sorted(dupes)}")
    return runs


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def write_run_configs(grid_path: str | Path, dest: str | Path) -> list[Path]:
    """Write one TOML per run of the grid into dest (fully resolved: every key explicit)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    header = (f"# generated from {grid_path}, and again whenever a stage is given the grid's name: edit the grid,\n"
              "# or edit this file and pass the file (or its folder) to the stages for a one-off change.\n"
              "# The run name is derived from the fields (set name = \"...\" to fix one by hand).\n")
    for cfg in expand_grid(grid_path):
        p = dest / f"{cfg.name}.toml"
        tmp = p.with_suffix(".toml.tmp")
        data = cfg.to_dict()
        del data["name"]
        tmp.write_text(header + tomli_w.dumps(data))
        tmp.replace(p)
        paths.append(p)
    return paths


def main(argv: list[str] | None = None) -> int:
    """python -m nanoGPT.config GRID.toml [DEST]: write the grid's run configs (default
    configs/runs/<grid name>/) and list them; --show CONFIG [key=value ...] prints a resolved run config."""
    import argparse
    import sys
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("path", help="a grid file, or with --show a run config")
    p.add_argument("rest", nargs="*", help="DEST for a grid; key=value overrides with --show")
    p.add_argument("--show", action="store_true")
    args = p.parse_args(argv)
    try:
        if args.show:
            cfg = load_config(args.path, args.rest)
            print(f"# {cfg.name}\n{cfg.dumps()}", end="")
            return 0
        grid, _, _ = load_grid(args.path)
        dest = Path(args.rest[0]) if args.rest else Path("configs/runs") / grid.name
        paths = write_run_configs(args.path, dest)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    print(f"{len(paths)} run configs in {dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
