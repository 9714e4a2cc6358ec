"""Tests for nanoGPT/config.py against the published settings of METHODS.md.

Independent references: the settings listed in METHODS.md ("The published training setup",
"The mitigation methods" table), the published run-name example, and names of the 140
published runs assembled by hand below from the METHODS.md tables (not from run_name()).
"""
from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanoGPT.config import (
    ConfigError,
    RunConfig,
    config_from_dict,
    expand_grid,
    load_config,
    load_grid,
    write_run_configs,
)

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "configs" / "grids" / "published.toml"
TINY_GRID = REPO / "configs" / "grids" / "tiny_cpu.toml"
EXAMPLE = "wor40A-16M-13p1B-100k-bs64-lr10-baseline-g0e+00-s1"


# ----------------------------------------------------------------------------- defaults
def test_defaults_are_published_settings():
    cfg = load_config()
    assert cfg.optim.beta1 == 0.9 and cfg.optim.beta2 == 0.95
    assert cfg.optim.weight_decay == 0.0
    assert cfg.optim.grad_clip == 1.0
    assert cfg.batch.batch_size == 64
    assert cfg.batch.seq_len == 2048
    assert cfg.schedule.max_steps == 100_000
    assert cfg.schedule.warmup_steps == 5_000
    assert cfg.schedule.min_lr == 1e-5
    assert cfg.model.tie_weights is False
    assert cfg.model.vocab_size == 50304
    assert cfg.model.scale in ("16M", "4")
    assert cfg.method.name == "baseline" and cfg.method.gamma == 0.0
    assert cfg.seed == 1
    assert cfg.tokens == 64 * 2048 * 100_000 == 13_107_200_000  # 13.1B tokens
    g = cfg.gpt_config()
    assert (g.n_layer, g.d_model, g.n_head, g.block_size, g.tie_weights) == (6, 224, 4, 2048, False)


# ----------------------------------------------------------------------------- run names
def test_published_example_name():
    cfg = load_config(overrides=["optim.lr=1e-3"])
    assert cfg.name == EXAMPLE


def test_float32_logits_runs_are_named_apart():
    cfg = load_config(overrides=["optim.lr=1e-3", "model.float32_logits=true"])
    assert cfg.name == EXAMPLE + "-f32logits"
    assert cfg.model.float32_logits and not load_config().model.float32_logits


@pytest.mark.parametrize("lr,tok", [(3e-4, "3"), (1e-3, "10"), (3e-3, "30"), (1e-2, "100"), (3e-2, "300"), (1e-1, "1000"), (3e-1, "3000")])
def test_lr_tokens(lr, tok):
    cfg = load_config(overrides=[f"optim.lr={lr!r}"])
    assert f"-lr{tok}-" in cfg.name


# hand-assembled from METHODS.md tables
_SCALES = [("4", "16M"), ("6", "29M"), ("8", "57M"), ("A", "109M"), ("C", "221M")]
_METHODS = [("A", "baseline", "0e+00", 0.0), ("Z", "z-loss", "1e-04", 1e-4), ("E", "mu-loss", "1e-01", 1e-1), ("R", "mu-centering", "0e+00", 0.0)]
_LRS = [(3e-4, "3"), (1e-3, "10"), (3e-3, "30"), (1e-2, "100"), (3e-2, "300"), (1e-1, "1000"), (3e-1, "3000")]


def test_published_grid_expands_to_the_140_published_runs():
    runs = expand_grid(PUBLISHED)
    assert len(runs) == 140 == 5 * 4 * 7
    names = [r.name for r in runs]
    assert len(set(names)) == 140
    expected = {}
    for sl, sname in _SCALES:
        for ml, mname, g, gamma in _METHODS:
            for lr, tok in _LRS:
                expected[f"wor{sl}0{ml}-{sname}-13p1B-100k-bs64-lr{tok}-{mname}-g{g}-s1"] = (sname, mname, gamma, lr)
    assert set(names) == set(expected)
    lr_tokens = {n.split("-lr")[1].split("-")[0] for n in names}
    assert lr_tokens == {"3", "10", "30", "100", "300", "1000", "3000"}
    for r in runs:
        sname, mname, gamma, lr = expected[r.name]
        assert r.method.name == mname
        assert r.method.gamma == pytest.approx(gamma, rel=1e-12, abs=0)
        assert r.optim.lr == pytest.approx(lr, rel=1e-12)
        assert r.model.tie_weights is False
        assert (r.batch.batch_size, r.batch.seq_len, r.schedule.max_steps, r.schedule.warmup_steps) == (64, 2048, 100_000, 5_000)
        assert r.schedule.min_lr == 1e-5 and r.optim.beta1 == 0.9 and r.optim.beta2 == 0.95
        assert r.optim.weight_decay == 0.0 and r.optim.grad_clip == 1.0
        assert r.seed == 1
        if mname == "z-loss":
            assert "-g1e-04-" in r.name
        if mname == "mu-loss":
            assert "-g1e-01-" in r.name


@pytest.mark.parametrize("method,gamma,letter", [("baseline", 0.0, "a"), ("z-loss", 1e-4, "z"), ("mu-loss", 1e-1, "e"), ("mu-centering", 0.0, "r")])
def test_tied_runs_use_lower_case_letters(method, gamma, letter):
    untied = load_config(overrides=[f"method.name={method}", f"method.gamma={gamma!r}"])
    tied = load_config(overrides=[f"method.name={method}", f"method.gamma={gamma!r}", "model.tie_weights=true"])
    assert tied.name.startswith(f"wor40{letter}-16M-")
    assert untied.name.startswith(f"wor40{letter.upper()}-16M-")
    assert tied.name != untied.name


def test_explicit_name_is_kept():
    # a bare name=... override is ambiguous with method.name (see below); files set it plainly
    cfg = config_from_dict({"name": "my-run"})
    assert cfg.name == "my-run"


# ----------------------------------------------------------------------------- round trips
def _non_default_config() -> RunConfig:
    return load_config(overrides=[
        "model.scale=tiny", "model.tie_weights=true", "method.name=mu-centering+orthograd",
        'method.orthograd_skip=["ln", "wte"]', "optim.lr=3e-3", "schedule.max_steps=80",
        "schedule.warmup_steps=8", "batch.batch_size=8", "batch.micro_batch_size=4", "batch.seq_len=128",
        "system.device=cpu", "seed=3",
    ])


@pytest.mark.parametrize("make", [load_config, _non_default_config])
def test_dumps_round_trip(make):
    cfg = make()
    back = config_from_dict(tomllib.loads(cfg.dumps()))
    assert back == cfg
    assert back.name == cfg.name


def test_round_trip_sees_a_change():
    cfg = load_config()
    data = tomllib.loads(cfg.dumps())
    data["optim"]["lr"] = 2e-3
    assert config_from_dict(data) != cfg


@pytest.mark.parametrize("grid", [PUBLISHED, TINY_GRID])
def test_write_run_configs_load_back_equal(grid, tmp_path):
    paths = write_run_configs(grid, tmp_path / "runs")
    runs = expand_grid(grid)
    assert len(paths) == len(runs)
    assert sorted(p.name for p in paths) == sorted(f"{r.name}.toml" for r in runs)
    assert not list((tmp_path / "runs").glob("*.tmp"))
    by_name = {r.name: r for r in runs}
    for p in paths:
        loaded = load_config(p)
        assert loaded == by_name[p.stem]


# ----------------------------------------------------------------------------- overrides
def test_override_section_key():
    assert load_config(overrides=["optim.lr=3e-3"]).optim.lr == 3e-3


def test_override_unique_bare_key():
    cfg = load_config(overrides=["lr=3e-3"])
    assert cfg.optim.lr == 3e-3
    assert "-lr30-" in cfg.name
    assert load_config(overrides=["warmup_steps=100"]).schedule.warmup_steps == 100
    assert load_config(overrides=["seed=7"]).seed == 7


@pytest.mark.parametrize("value,name,n_layer", [("4", "16M", 6), ("6", "29M", 9), ("A", "109M", 15), ("16M", "16M", 6)])
def test_override_scale_is_a_string(value, name, n_layer):
    cfg = load_config(overrides=[f"model.scale={value}"])
    assert cfg.model.scale == value
    assert isinstance(cfg.model.scale, str)
    assert cfg.gpt_config().n_layer == n_layer
    assert f"-{name}-" in cfg.name


def test_override_booleans():
    assert load_config(overrides=["model.tie_weights=true"]).model.tie_weights is True
    assert load_config(overrides=["tie_weights=false"]).model.tie_weights is False
    assert load_config(overrides=["model.xavier_init=false"]).model.xavier_init is False
    with pytest.raises(ConfigError, match="model.tie_weights"):
        load_config(overrides=["model.tie_weights=yes"])


def test_override_lists():
    cfg = load_config(overrides=["method.name=orthograd", 'method.orthograd_skip=["ln"]'])
    assert cfg.method.orthograd_skip == ["ln"]
    cfg = load_config(overrides=["method.name=orthograd", 'orthograd_skip=["ln", "wte"]'])
    assert cfg.method.orthograd_skip == ["ln", "wte"]
    with pytest.raises(ConfigError, match=r"method\.orthograd_skip"):
        load_config(overrides=["method.orthograd_skip=[1, 2]"])


def test_override_literal_and_string_values():
    cfg = load_config(overrides=["system.device=cpu", "out_dir=output/x", "data.train=a/b_*.bin"])
    assert cfg.system.device == "cpu" and cfg.out_dir == "output/x" and cfg.data.train == "a/b_*.bin"


@pytest.mark.parametrize("item", ["foo=1", "learning_rate=1e-3", "optim.foo=1", "model.lr=1e-3"])
def test_unknown_override_key(item):
    key = item.split("=")[0]
    with pytest.raises(ConfigError) as ei:
        load_config(overrides=[item])
    assert key in str(ei.value)


def test_ambiguous_bare_key_name():
    # 'name' is both the top-level run name and method.name: the only ambiguous key of the
    # schema. A bare `name=z-loss` must not silently rename the run while keeping the baseline.
    with pytest.raises(ConfigError) as ei:
        load_config(overrides=["name=z-loss"])
    assert "name" in str(ei.value)


def test_override_without_equals():
    with pytest.raises(ConfigError):
        load_config(overrides=["optim.lr"])


# ----------------------------------------------------------------------------- bad configs
def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "run.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,key", [
    ("bogus = 1\n", "bogus"),
    ("[optim]\nlearning_rate = 1e-3\n", "optim.learning_rate"),
    ("[optimizer]\nlr = 1e-3\n", "optimizer"),
    ('[optim]\nlr = "1e-3"\n', "optim.lr"),
    ("[schedule]\nmax_steps = 1000.0\n", "schedule.max_steps"),
    ("[model]\ntie_weights = 1\n", "model.tie_weights"),
    ("[optim]\nlr = -1e-3\n", "optim.lr"),
    ("[optim]\nlr = 0.0\n", "optim.lr"),
    ("[optim]\nlr = nan\n", "optim.lr"),
    ("[optim]\nlr = inf\n", "optim.lr"),
    ("[schedule]\nmax_steps = 100\nwarmup_steps = 200\n", "schedule.warmup_steps"),
    ("[batch]\nbatch_size = 64\nmicro_batch_size = 7\n", "batch.micro_batch_size"),
    ('[method]\nname = "no-such-method"\n', "method.name"),
    ('[method]\nname = "stablemax+z-loss"\ngamma = 1e-4\n', "method.name"),
    ('[method]\nname = "z-loss+mu-loss"\ngamma = 1e-4\n', "method.name"),
    ('[method]\nname = "z-loss"\n', "method.gamma"),
    ('[method]\nname = "mu-loss"\ngamma = 0.0\n', "method.gamma"),
    ('[method]\nname = "baseline"\ngamma = 1e-4\n', "method.gamma"),
    ('[model]\nscale = "999M"\n', "model.scale"),
    ("[model]\nscale = 4\n", "model.scale"),
    ('[system]\ndevice = "gpu"\n', "system.device"),
    ('[system]\ndtype = "fp16"\n', "system.dtype"),
    ("model = 3\n", "model"),
    ("seed = -1\n", "seed"),
    ("[model]\nvocab_size = 128\n", "model.vocab_size"),
    ('name = "a/b"\n', "name"),
    ("[log]\nspike_factor = 1.0\n", "log.spike_factor"),
    ("[log]\nspike_factor = -2.0\n", "log.spike_factor"),
    ("[log]\nspike_factor = inf\n", "log.spike_factor"),
    ('[method]\nname = "mu-centering"\northograd_skip = ["ln"]\n', "method.orthograd_skip"),
])
def test_bad_config_file_names_key(tmp_path, text, key):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    assert f"'{key}" in str(ei.value), str(ei.value)


@pytest.mark.parametrize("override,key", [
    ("optim.lr=-3e-3", "optim.lr"),
    ("lr=abc", "optim.lr"),
    ("schedule.max_steps=1e5", "schedule.max_steps"),
    ("warmup_steps=200000", "schedule.warmup_steps"),
    ("micro_batch_size=5", "batch.micro_batch_size"),
    ("method.name=stablemax+z-loss", "method.name"),
    ("method.name=z-loss", "method.gamma"),
    ("method.gamma=0.1", "method.gamma"),
    ("model.scale=7", "model.scale"),
    ("system.device=tpu", "system.device"),
    ("system.compile=maybe", "system.compile"),
])
def test_bad_override_names_key(override, key):
    with pytest.raises(ConfigError) as ei:
        load_config(overrides=[override])
    assert f"'{key}" in str(ei.value), str(ei.value)


def test_unknown_method_named_like_gamma_blames_method_name():
    # the key is picked by searching the message for 'gamma'; an unknown method whose name
    # contains 'gamma' must still be reported as method.name
    with pytest.raises(ConfigError) as ei:
        config_from_dict({"method": {"name": "gamma"}})
    assert "'method.name'" in str(ei.value), str(ei.value)


def test_invalid_toml_file(tmp_path):
    path = _write(tmp_path, "[optim\nlr = \n")
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    assert str(path) in str(ei.value)


def test_non_utf8_toml_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_bytes(b"\xff\xfe = 1\n")
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    assert str(path) in str(ei.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    assert str(path) in str(ei.value)
    with pytest.raises(ConfigError):
        load_config(tmp_path)  # a directory is not a config file


def test_huge_integer_for_float_key_is_a_config_error():
    # TOML (and so the override parser) reads arbitrary-size integers; float() overflows.
    with pytest.raises(ConfigError) as ei:
        load_config(overrides=["optim.lr=1" + "0" * 400])
    assert "optim.lr" in str(ei.value)


def test_huge_max_steps_is_a_config_error_or_valid():
    # schedule.max_steps is an unbounded int; the run name divides tokens by 1e9 as a float
    try:
        cfg = load_config(overrides=["schedule.max_steps=1" + "0" * 400])
    except ConfigError as e:
        assert "schedule.max_steps" in str(e)
    else:
        assert cfg.schedule.max_steps == 10 ** 400


# ----------------------------------------------------------------------------- grid files
def _grid(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "grid.toml"
    p.write_text(text)
    return p


def test_grid_unknown_section(tmp_path):
    p = _grid(tmp_path, '[grid]\nscales = ["tiny"]\n[gammas]\n"z-loss" = [1e-4]\n')
    with pytest.raises(ConfigError) as ei:
        expand_grid(p)
    assert "gammas" in str(ei.value)


def test_grid_gamma_for_method_not_in_grid(tmp_path):
    p = _grid(tmp_path, '[grid]\nscales = ["tiny"]\nmethods = ["baseline"]\n[gamma]\n"mu-loss" = [0.1]\n')
    with pytest.raises(ConfigError) as ei:
        expand_grid(p)
    assert "gamma.mu-loss" in str(ei.value)


def test_grid_unknown_key_scale_and_missing_gamma(tmp_path):
    with pytest.raises(ConfigError, match=r"grid\.lrs"):
        expand_grid(_grid(tmp_path, "[grid]\nlrs = [1e-3]\n"))
    with pytest.raises(ConfigError, match=r"grid\.scales"):
        expand_grid(_grid(tmp_path, '[grid]\nscales = ["3B"]\n'))
    with pytest.raises(ConfigError, match=r"method\.gamma"):
        expand_grid(_grid(tmp_path, '[grid]\nscales = ["tiny"]\nmethods = ["z-loss"]\n'))


def test_grid_gamma_list_and_scalar(tmp_path):
    p = _grid(tmp_path, '[grid]\nscales = ["tiny"]\nmethods = ["z-loss", "mu-loss"]\nlearning_rates = [1e-3]\n'
                        '[gamma]\n"z-loss" = [1e-4, 1e-3]\n"mu-loss" = 0.1\n')
    runs = expand_grid(p)
    assert sorted((r.method.name, r.method.gamma) for r in runs) == [("mu-loss", 0.1), ("z-loss", 1e-4), ("z-loss", 1e-3)]
    assert all(r.out_dir == "output/grid" for r in runs)
    grid, gammas, base = load_grid(p)
    assert gammas == {"z-loss": [1e-4, 1e-3], "mu-loss": [0.1]}


@pytest.mark.parametrize("text", ["grid = 3\n", "gamma = 3\n", "base = 3\n", '[grid]\nscales = "16M"\n'])
def test_grid_malformed_sections_are_config_errors(tmp_path, text):
    with pytest.raises(ConfigError):
        expand_grid(_grid(tmp_path, text))


# ----------------------------------------------------------------------------- fuzz
_HINTS = typing.get_type_hints(RunConfig)
SECTIONS = {name: [f.name for f in dataclasses.fields(tp)] for name, tp in _HINTS.items() if dataclasses.is_dataclass(tp)}
TOP_KEYS = [name for name in _HINTS if name not in SECTIONS]
ALL_KEYS = sorted(set(TOP_KEYS) | set(SECTIONS) | {k for ks in SECTIONS.values() for k in ks})

_EDGE = st.sampled_from([
    "16M", "4", "tiny", "baseline", "z-loss", "mu-loss", "stablemax+z-loss", "orthograd", "gamma",
    "cpu", "cuda", "auto", "on", "off", "bfloat16", "", ".", "a/b", 0, 1, -1, 0.0, 1e-3, 1e-4, 0.5,
    50304, 64, 2048, True, False, math.nan, math.inf, -math.inf,
])
# valid (arbitrary-size) TOML/Python integers beyond the float range
_HUGE = st.sampled_from([2 ** 1024, -(2 ** 1024), 10 ** 400])
_scalars = st.one_of(
    _EDGE,
    _HUGE,
    st.text(max_size=8),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
_keys = st.one_of(st.sampled_from(ALL_KEYS), st.text(max_size=8))
_values = st.recursive(_scalars, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(_keys, c, max_size=3)),
                       max_leaves=6)


@st.composite
def _config_dicts(draw):
    """Mostly a real config (all defaults written out, or only some sections) with a few keys
    replaced by random values of any type, plus junk keys and non-table sections now and then:
    that way the random values get past the first type check and reach validate() and run_name()."""
    base = RunConfig().to_dict()
    del base["name"]
    if draw(st.booleans()):
        base = {k: v for k, v in base.items() if draw(st.booleans())}
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 9))
        if kind <= 6:      # a real key, any value
            sec = draw(st.sampled_from(sorted(SECTIONS) + [""]))
            if sec == "":
                data[draw(st.sampled_from(TOP_KEYS))] = draw(_values)
            else:
                if not isinstance(data.get(sec), dict):
                    data[sec] = {}
                data[sec][draw(st.sampled_from(SECTIONS[sec]))] = draw(_values)
        elif kind == 7:    # a section that is not a table
            data[draw(st.sampled_from(sorted(SECTIONS)))] = draw(_scalars)
        elif kind == 8:    # an unknown key at the top level or in a section
            sec = draw(st.sampled_from(sorted(SECTIONS) + [""]))
            target = data if sec == "" else data.setdefault(sec, {}) if isinstance(data.get(sec), dict) else data
            target[draw(_keys)] = draw(_values)
        else:              # a wholly random dict
            data = draw(st.dictionaries(_keys, _values, max_size=4))
    return data


@pytest.mark.faults
@settings(max_examples=300, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_config_dicts())
def test_fuzz_config_from_dict_only_raises_config_error(data):
    snapshot = repr(data)
    try:
        cfg = config_from_dict(data)
    except ConfigError:
        return
    except Exception as e:  # anything else is a bug: show the input that caused it
        raise AssertionError(f"config_from_dict({snapshot}) raised {type(e).__name__}: {e}") from e
    assert isinstance(cfg, RunConfig)
    assert cfg.name and "/" not in cfg.name
    assert math.isfinite(cfg.optim.lr) and cfg.optim.lr > 0


def _only_config_errors(load, what: str) -> None:
    try:
        cfg = load()
    except ConfigError:
        return
    except Exception as e:  # anything else is a bug: show the input that caused it
        raise AssertionError(f"{what} raised {type(e).__name__}: {e}") from e
    assert isinstance(cfg, RunConfig) and cfg.name


_override_keys = st.one_of(st.sampled_from(ALL_KEYS + [f"{s}.{k}" for s, ks in SECTIONS.items() for k in ks]), st.text(max_size=12))
_override_values = st.one_of(st.sampled_from(["1e-3", "-1", "nan", "inf", "true", "[1, 2]", '"x"', "{a = 1}", "1" + "0" * 400,
                                              "tiny", "z-loss", "stablemax+z-loss", "", "=", "[", "'"]), st.text(max_size=12))


@pytest.mark.faults
@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", _override_keys, _override_values), st.text(max_size=20)), max_size=4))
def test_fuzz_command_line_overrides_only_raise_config_error(overrides):
    _only_config_errors(lambda: load_config(overrides=overrides), f"load_config(overrides={overrides!r})")


_toml_lines = st.one_of(
    st.builds(lambda k, v: f"{k} = {v}", _override_keys, _override_values),
    st.sampled_from(["[model]", "[optim]", "[log]", "[[optim]]", "[optim.lr]", "[", "model = 3", "optim = {lr = -1}"]),
    st.text(max_size=20),
)


@pytest.mark.faults
@settings(max_examples=300, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_toml_lines, max_size=6), st.binary(max_size=4))
def test_fuzz_config_files_only_raise_config_error(tmp_path, lines, junk):
    path = tmp_path / "run.toml"
    path.write_bytes("\n".join(lines).encode() + junk)
    _only_config_errors(lambda: load_config(path), f"load_config of {path.read_bytes()!r}")
