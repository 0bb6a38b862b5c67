"""Write docs/configuration.md: every config key tlexp validates, what it accepts, its default and an example.

The keys, their allowed values and examples come from the rule table of `src/tlexp/config/validate.py` (`rules()`);
the defaults from the composed configs (`conf/train.yaml` as `python -m tlexp.train` composes it, then the
alternatives that hold the keys the plain composition lacks: `strategy=auto`, the other dataset and trainer
configs, and the other entry points' configs). Run with the project's virtualenv:

    .venv/bin/python docs/gen_config_reference.py            # writes docs/configuration.md
    .venv/bin/python docs/gen_config_reference.py OUT.md     # writes OUT.md (`-` for stdout)

`make docs` runs it before building the site; tests/test_docs.py checks that docs/configuration.md is current.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tlexp.config.cli import compose_config
from tlexp.config.validate import rule, rules

DOCS = Path(__file__).resolve().parent
COMMAND = ".venv/bin/python docs/gen_config_reference.py"

# Where defaults come from, in order: the first composition that holds a key gives its default. The label says
# which choice it needs when it is not the plain `python -m tlexp.train`.
TRAIN_COMPOSITIONS = [
    ("", "train", []),
    ("strategy=auto", "train", ["strategy=auto"]),
    ("dataset=imagefolder", "train", ["dataset=imagefolder"]),
    ("dataset=csv", "train", ["dataset=csv"]),
    ("dataset=synthetic", "train", ["dataset=synthetic"]),
    ("trainer=gpu", "train", ["trainer=gpu"]),
    ("trainer=ddp", "train", ["trainer=ddp"]),
    ("trainer=ddp_cpu", "train", ["trainer=ddp_cpu"]),
]
ENTRY_POINTS = ["inspect", "advise", "compare", "audit", "plan", "evaluate", "predict", "export"]
SECTION_TITLES = {
    "": "Top-level keys (`python -m tlexp.train`, and inspect, advise and compare, which compose it)",
    "model": "`model.*` (`conf/model/*.yaml`)",
    "strategy": "`strategy.*` (`conf/strategy/*.yaml`)",
    "dataset": "`dataset.*` (`conf/dataset/*.yaml`)",
    "trainer": "`trainer.*` (`conf/trainer/*.yaml`; any other `lightning.Trainer` argument passes through)",
    "other": "The other entry points' own keys (`conf/<entry point>.yaml`)",
}
_MISSING = object()
_REQUIRED = "required (`???`: no default)"


def show(value) -> str:
    """A value as it is written on the command line (`true`, `null`, `[0,1,2]`, `{head: 0.001}`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)


def raw(cfg: DictConfig, key: str):
    """The key's value as written in the YAML (interpolations unresolved: no machine's paths), or _MISSING."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node.keys():  # `in` alone skips ??? values
            return _MISSING
        parent, node = node, node._get_node(part)
        if OmegaConf.is_missing(parent, part):
            return _REQUIRED
    if isinstance(node, DictConfig) or OmegaConf.is_list(node):
        return OmegaConf.to_container(node, resolve=False)
    return node._value()


def default(value) -> str:
    return value if value is _REQUIRED else code(show(value))


def code(text: str) -> str:
    return f"`{text}`" if "`" not in text else f"``{text}``"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def defaults() -> tuple[dict[str, str], dict[str, list[str]]]:
    """key -> its default as shown in the table; and, for entry-point keys, key -> the entry points holding it."""
    table = rules()
    found: dict[str, str] = {}
    for label, name, overrides in TRAIN_COMPOSITIONS:
        cfg = compose_config(name, overrides)
        for key in table:
            value = raw(cfg, key)
            if key not in found and value is not _MISSING:
                found[key] = default(value) + (f" (with `{label}`)" if label else "")
    per_entry: dict[str, dict[str, str]] = {}
    holders: dict[str, list[str]] = {}
    for name in ENTRY_POINTS:
        cfg = compose_config(name, [])
        for key in table:
            value = raw(cfg, key)
            if key in found or value is _MISSING:
                continue
            per_entry.setdefault(key, {})[name] = default(value)
            holders.setdefault(key, []).append(name)
    for key, values in per_entry.items():
        if len(set(values.values())) == 1:
            found[key] = next(iter(values.values()))
        else:
            found[key] = "; ".join(f"{name}: {v}" for name, v in values.items())
    return found, holders


def section_of(key: str, holders: dict[str, list[str]]) -> str:
    if key in holders and "." not in key:
        return "other"
    return key.split(".", 1)[0] if "." in key else ""


def render() -> str:
    table = rules()
    found, holders = defaults()
    sections: dict[str, list[str]] = {"": []}
    for key in table:
        sections.setdefault(section_of(key, holders), []).append(key)
    if "other" in sections:
        sections["other"] = sections.pop("other")  # last
    out = [
        "# Configuration reference",
        "",
        f"Generated by `{COMMAND}` (`make docs` runs it) from the validation rule table in",
        "`src/tlexp/config/validate.py` and the defaults of the composed `conf/train.yaml`: do not edit it by hand.",
        "",
        "Every key below is checked before any weights or data are loaded; a bad value is one message naming the",
        "key, the value, what is allowed and an example ([reliability.md](reliability.md)). A default marked",
        "*with* a choice comes from that config group (the plain `python -m tlexp.train` does not hold the key);",
        "interpolations (`${...}`) are shown as written, and resolved when a run starts. A config group's own",
        "choice (`dataset=imagefolder`, `strategy=gradual`, `model=resnet50`) can change a key's default; —: no",
        "config sets the key (for `dataset.preprocess.*`: the backbone's pretrained config decides).",
        "",
    ]
    for section, keys in sections.items():
        if not keys:
            continue
        title = SECTION_TITLES.get(section, f"`{section}.*`")
        out += [f"## {title}", ""]
        other = section == "other"
        head = "| key | allowed | default | example |" + (" used by |" if other else "")
        out += [head, "|---|---|---|---|" + ("---|" if other else "")]
        for key in keys:
            r = rule(key)
            row = [code(key), cell(r.allowed), cell(found.get(key, "—")), code(f"{key}={show(r.example)}")]
            if other:
                row.append(", ".join(holders.get(key, [])))
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str]) -> None:
    target = argv[0] if argv else str(DOCS / "configuration.md")
    text = render()
    if target == "-":
        sys.stdout.write(text)
    else:
        Path(target).write_text(text)


if __name__ == "__main__":
    main(sys.argv[1:])
