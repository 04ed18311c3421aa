"""A sweep file becomes a list of validated runs (the seed assignment's format, plus a little).

Format: `base_config` (a run config; the seed's flat names work) and `experiments`, a list of
groups. A group has a `name`, a `tag` (or a list of tags) and either

* `params`: key -> list of values. Every combination of the lists is one run: base_config, then
  the group's `fixed_params`, then the combination. The run is named after the tag plus, for each
  swept key, `_` + the key without underscores + the value (`seq_len_sequencelength512`);
* `runs`: a list of `{name, params, num_gpus}`, each `params` merged over base_config key by key
  (a nested mapping such as `model_config` is merged, not replaced).

Extensions: `base_file`, a run config (a preset such as configs/tinyllama_1b.yaml; a path relative
to the sweep file) applied under base_config, so a sweep of a preset does not copy its shape;
dotted keys anywhere (`model.d_model`), `num_gpus` on a group, `fixed_params` in a
`runs` group too, and `repeat: N` or `seeds: [..]` on a group or a run for repeated runs (names
end in `_rep<k>` / `_seed<s>`; `logging.repeat` is k). Repeats are interleaved: round k runs the
k-th repeat of every selected configuration, in file order, before round k+1 starts (a b a b,
not a a b b), so a slow spell of the machine hits every configuration, not one. Layers are
applied in order, base_file < base_config < fixed_params < the run's params < command-line
overrides, so a later layer wins for one key and leaves the others alone.
Every run is built and validated before the first starts: a mistake anywhere stops the sweep
with one line naming the run and the key, and so do two runs that are one run (the same
configuration, seed and repeat under two names: lmprof.identity).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from lmprof.config import (
    LEAF_KEYS,
    RunConfig,
    build_config,
    expand_key,
    load_yaml,
    parse_override,
)
from lmprof.errors import ConfigError, UserError

TOP_LEVEL_KEYS = ("base_file", "base_config", "experiments")
GROUP_KEYS = (
    "name",
    "tag",
    "description",
    "params",
    "fixed_params",
    "runs",
    "num_gpus",
    "repeat",
    "seeds",
)
RUN_KEYS = ("name", "params", "num_gpus", "repeat", "seeds")
# Set by the sweep for each run; an override would give every run the same name.
SWEEP_OWNED = ("logging.run_name", "logging.tag", "logging.repeat", "logging.attempt")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")
# The most runs one sweep file may expand to (grid combinations x seeds x repeats, all groups):
# at a minute a run that is a week of work; more is a typo (`repeat: 1e9`, one more zero), and
# expanding it would fill memory before the first run. Counted before anything is built.
MAX_RUNS = 10_000


@dataclass
class RunPlan:
    """One run of a sweep, resolved and validated."""

    index: int  # 1-based position among the selected runs
    name: str
    tags: tuple[str, ...]
    group: str
    cfg: RunConfig
    changes: dict[str, Any] = field(default_factory=dict)  # dotted key -> value, vs base_config
    unrunnable: str | None = None  # why this machine cannot run it (recorded `skipped`)
    round: int = 1  # which repeat round it runs in (1 for a configuration run once)

    @property
    def num_gpus(self) -> int:
        return self.cfg.system.num_gpus

    @property
    def tag(self) -> str:
        return self.tags[0] if self.tags else ""

    @cached_property
    def config_hash(self) -> str:
        return self.cfg.hash()

    @property
    def identity(self) -> tuple[str, str, str]:
        """What results.csv knows the run by (lmprof.identity.run_key of its rows)."""
        return self.cfg.identity()

    def describe_changes(self) -> str:
        """The settings that differ from the base, as `key=value` with short key names."""
        return " ".join(f"{_short_key(k)}={_fmt_value(v)}" for k, v in self.changes.items())


@dataclass
class _Spec:
    """A run before it is built: its name, tags, group and config layers (lowest first)."""

    name: str
    tags: tuple[str, ...]
    group: str
    layers: list[Mapping[str, Any]]
    round: int = 1


_Selectable = TypeVar("_Selectable", RunPlan, _Spec)

# ---------------------------------------------------------------------------------------------


def load_sweep(path: str | Path) -> dict[str, Any]:
    """The sweep file's mapping, with its top level checked."""
    doc = load_yaml(path)
    if "experiments" not in doc:
        raise UserError(
            f"'{path}' is not a sweep file: it has no 'experiments' list "
            f"(for a single run use `lmprof run {path}`)"
        )
    for key in doc:
        if key not in TOP_LEVEL_KEYS:
            raise UserError(
                f"'{path}': unknown top-level key '{key}' (a sweep file has "
                "base_file, base_config and experiments)"
            )
    name = doc.get("base_file")
    if name is not None:
        if not isinstance(name, str) or not name:
            raise UserError(f"'{path}': base_file must be the path of a run config")
        base_path = Path(path).parent / name
        if not base_path.is_file():
            raise UserError(f"'{path}': base_file '{name}' is not a file ({base_path})")
        base = load_yaml(base_path)
        if "experiments" in base:
            raise UserError(
                f"'{path}': base_file '{name}' is a sweep file; base_file names a run config "
                "(a preset such as configs/tinyllama_1b.yaml)"
            )
        doc = {**doc, "base_file": base}  # its mapping, read once
    return doc


def plan_sweep(
    path: str | Path,
    tags: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    check_env: bool = True,
    repeat: int | None = None,
) -> list[RunPlan]:
    """Expand, validate and select the runs of a sweep file; nothing is started. `repeat`
    (`--repeat N`) is the repeat of every group and run that does not set its own."""
    plans = expand_sweep(
        load_sweep(path), overrides=overrides, source=str(path), repeat=repeat, tags=tags
    )
    if check_env:
        from lmprof.environment import check_environment

        for p in plans:
            try:
                p.unrunnable = check_environment(p.cfg)
            except UserError as exc:  # the config's mistake (a data path), not the machine's
                raise UserError(f"run '{p.name}': {exc}") from None
    return plans


def expand_sweep(
    doc: Mapping[str, Any],
    overrides: Sequence[str] = (),
    source: str = "sweep file",
    repeat: int | None = None,
    tags: Sequence[str] | None = None,
) -> list[RunPlan]:
    """The runs of the sweep with any of `tags` (all when None), built and validated, in file
    order. Only those are built: an override is checked against the runs it will change, not
    against a run left out (precision=fp32 would be invalid for a FlashAttention run)."""
    base = doc.get("base_config") or {}
    if not isinstance(base, Mapping):
        raise UserError(f"'{source}': base_config must be a mapping of keys to values")
    # base_file (load_sweep has read it) goes under base_config: one layer of the two.
    under = doc.get("base_file") or {}
    if not isinstance(under, Mapping):
        raise UserError(f"'{source}': base_file must name a run config (load_sweep reads it)")
    bases = (under, base)
    groups = doc.get("experiments") or []
    if not isinstance(groups, list):
        raise UserError(f"'{source}': experiments must be a list of groups")
    _check_overrides(overrides)
    try:
        base_cfg = build_config(*bases, overrides=overrides, run="base_config")
    except ConfigError:
        # base_config is only the reference the changes are listed against; whether an override
        # is valid is the selected runs' question, each built below with its own layers.
        base_cfg = build_config(*bases, run="base_config")
    base_flat = _flat(base_cfg)

    specs: list[_Spec] = []
    for i, group in enumerate(groups):
        specs.extend(_expand_group(group, i, source, repeat, MAX_RUNS - len(specs)))
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.name in seen:
            raise UserError(
                f"'{source}': run name '{spec.name}' appears twice (groups '{seen[spec.name]}' "
                f"and '{spec.group}'); run names must be unique"
            )
        seen[spec.name] = spec.group
    # Interleaved: every configuration's first repeat, then every second one, ... (stable, so
    # file order holds within a round).
    specs = sorted(select(specs, tags), key=lambda sp: sp.round)

    plans = []
    same: dict[tuple[str, str, str], str] = {}
    for spec in specs:
        owned = {"logging": {"run_name": spec.name, "tag": spec.tags[0] if spec.tags else ""}}
        cfg = build_config(*bases, *spec.layers, owned, overrides=overrides, run=spec.name)
        changes = {
            k: v for k, v in _flat(cfg).items() if k not in SWEEP_OWNED and base_flat.get(k) != v
        }
        plan = RunPlan(len(plans) + 1, spec.name, spec.tags, spec.group, cfg, changes)
        plan.round = spec.round
        if (twin := same.setdefault(plan.identity, plan.name)) != plan.name:
            raise UserError(
                f"'{source}': runs '{twin}' and '{plan.name}' are one run (the same "
                "configuration, tag, seed and repeat under two names): a run's name does not "
                "make it another; to measure a configuration again use repeat: N"
            )
        plans.append(plan)
    return plans


def select(plans: Sequence[_Selectable], tags: Sequence[str] | None) -> list[_Selectable]:
    """The runs with any of `tags` (a tag or a group name), renumbered; all runs if none."""
    if not tags:
        return list(plans)
    known = {t for p in plans for t in p.tags} | {p.group for p in plans}
    unknown = [t for t in tags if t not in known]
    if unknown:
        tag_list = sorted({t for p in plans for t in p.tags})
        raise UserError(f"no run has tag '{unknown[0]}'; the tags are: {', '.join(tag_list)}")
    wanted = set(tags)
    chosen = [p for p in plans if wanted & set(p.tags) or p.group in wanted]
    for i, p in enumerate(chosen, 1):
        if isinstance(p, RunPlan):
            p.index = i
    return chosen


# ---------------------------------------------------------------------------------------------
# Groups


def _check_count(n: int, room: int, where: str) -> None:
    """Refuse `n` more runs where only `room` of MAX_RUNS are left."""
    if n <= room:
        return
    total = n + MAX_RUNS - room
    says = f"expands to {n:,} runs" if total == n else f"brings the sweep to {total:,} runs"
    raise UserError(
        f"{where} {says}, more than a sweep file may hold ({MAX_RUNS:,} runs in all); "
        "split it into several sweeps"
    )


def _expand_group(
    group: Any, i: int, source: str, repeat: int | None = None, room: int = MAX_RUNS
) -> list[_Spec]:
    where = f"'{source}': experiments[{i}]"
    if not isinstance(group, Mapping):
        raise UserError(f"{where} must be a mapping with name, tag and params or runs")
    label = str(group.get("name") or group.get("tag") or f"group{i}")
    where = f"'{source}': group '{label}'"
    for key in group:
        if key not in GROUP_KEYS:
            raise UserError(f"{where}: unknown key '{key}' (allowed: {', '.join(GROUP_KEYS)})")
    if ("params" in group) == ("runs" in group):
        raise UserError(f"{where} needs exactly one of 'params' (a grid) or 'runs' (a list)")
    if "name" not in group and "tag" not in group:
        raise UserError(f"{where} needs a name or a tag")
    tags = _tags(group.get("tag"), where)
    fixed = _mapping(group.get("fixed_params"), f"{where}: fixed_params")
    group_layers: list[Mapping[str, Any]] = []
    if "num_gpus" in group:
        group_layers.append({"system.num_gpus": group["num_gpus"]})
    group_layers.append(fixed)
    group_reps = _repetitions(group, where, repeat)

    specs = []
    if "params" in group:
        params = _mapping(group["params"], f"{where}: params")
        if not params:
            raise UserError(f"{where}: params is empty")
        for key, values in params.items():
            if not isinstance(values, list) or not values:
                raise UserError(
                    f"{where}: params.{key} must be a non-empty list of values "
                    f"(got {values!r}); a single value belongs in fixed_params"
                )
        _check_count(math.prod(len(v) for v in params.values()) * len(group_reps), room, where)
        prefix = tags[0] if tags else label
        for combo in itertools.product(*params.values()):
            current = dict(zip(params.keys(), combo, strict=True))
            name = "_".join([prefix] + [_name_part(k, v) for k, v in current.items()])
            for k, (suffix, rep_layer) in enumerate(group_reps, start=1):
                specs.append(
                    _Spec(
                        _safe_name(name + suffix),
                        tags,
                        label,
                        [*group_layers, current, rep_layer],
                        k,
                    )
                )
    else:
        runs = group["runs"]
        if not isinstance(runs, list) or not runs:
            raise UserError(f"{where}: runs must be a non-empty list of {{name, params}}")
        for j, run in enumerate(runs):
            rwhere = f"{where}, runs[{j}]"
            if not isinstance(run, Mapping) or not run.get("name"):
                raise UserError(f"{rwhere} must be a mapping with a name and params")
            rwhere = f"{where}, run '{run['name']}'"
            for key in run:
                if key not in RUN_KEYS:
                    raise UserError(
                        f"{rwhere}: unknown key '{key}' (allowed: {', '.join(RUN_KEYS)})"
                    )
            layers = [*group_layers, _mapping(run.get("params"), f"{rwhere}: params")]
            if "num_gpus" in run:
                layers.append({"system.num_gpus": run["num_gpus"]})
            reps = _repetitions(run, rwhere) if ("repeat" in run or "seeds" in run) else group_reps
            _check_count(len(specs) + len(reps), room, rwhere)
            for k, (suffix, rep_layer) in enumerate(reps, start=1):
                specs.append(
                    _Spec(
                        _safe_name(str(run["name"]) + suffix), tags, label, [*layers, rep_layer], k
                    )
                )
    return specs


def _tags(tag: Any, where: str) -> tuple[str, ...]:
    if tag is None:
        return ()
    items = tag if isinstance(tag, list) else [tag]
    for t in items:
        if not isinstance(t, str | int) or isinstance(t, bool) or not str(t):
            raise UserError(f"{where}: tag must be a name or a list of names (got {tag!r})")
    return tuple(str(t) for t in items)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise UserError(f"{where} must be a mapping of keys to values (got {value!r})")
    return value


def _repetitions(
    block: Mapping[str, Any], where: str, default_repeat: int | None = None
) -> list[tuple[str, Mapping[str, Any]]]:
    """(name suffix, config layer) for each repetition asked for by `seeds` and/or `repeat`."""
    seeds = block.get("seeds")
    repeat = block.get("repeat", 1 if default_repeat is None else default_repeat)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise UserError(f"{where}: repeat must be a positive integer (got {repeat!r})")
    _check_count(repeat * (len(seeds) if isinstance(seeds, list) else 1), MAX_RUNS, where)
    if seeds is None:
        seed_layers: list[tuple[str, Mapping[str, Any]]] = [("", {})]
    else:
        if not isinstance(seeds, list) or not seeds:
            raise UserError(f"{where}: seeds must be a non-empty list of integers")
        seed_layers = [(f"_seed{s}", {"training.seed": s}) for s in seeds]
    reps: list[tuple[str, Mapping[str, Any]]] = (
        [("", {})]
        if repeat == 1
        else [(f"_rep{k}", {"logging.repeat": k}) for k in range(1, repeat + 1)]
    )
    return [(s + r, {**layer, **rep}) for s, layer in seed_layers for r, rep in reps]


# ---------------------------------------------------------------------------------------------
# Names and differences


def _name_part(key: str, value: Any) -> str:
    """The seed's `<key without underscores><value>`; a dotted key is named by its last part."""
    leaf = str(key).rsplit(".", 1)[-1].replace("_", "")
    if isinstance(value, Mapping):
        return "_".join(_name_part(k, v) for k, v in value.items())
    return f"{leaf}{_fmt_value(value)}"


def _fmt_value(value: Any) -> str:
    return str(value)  # as the seed's f-string: 512, True, 0.0003


def _safe_name(name: str) -> str:
    return _UNSAFE_NAME_CHARS.sub("-", name)


def _check_overrides(overrides: Sequence[str]) -> None:
    for text in overrides:
        key, value = parse_override(text)
        try:
            targets = [dotted for dotted, _ in expand_key(key, value)]
        except ConfigError:
            continue  # build_config reports unknown keys with a suggestion
        for dotted in targets:
            if dotted in SWEEP_OWNED:
                raise UserError(
                    f"override '{text}': {dotted} is set by the sweep for each run and cannot "
                    "be overridden"
                )


def _flat(cfg: RunConfig) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, section in cfg.to_dict().items() for k, v in section.items()}


def _short_key(dotted: str) -> str:
    leaf = dotted.split(".", 1)[1]
    return leaf if LEAF_KEYS.get(leaf) == dotted else dotted
