"""The documentation: a short README, every documented command accepted, the configuration reference current.

(b) finds every `python -m tlexp.train|advise|compare|inspect|audit|plan ...` line in the fenced code blocks of
README.md and docs/*.md and runs it with `--cfg job` appended: Hydra composes the config, prints it and exits 0, and
tlexp's own pre-Hydra checks (a missing dataset folder, a directory that holds a run) step aside for Hydra's flags,
so a command on `dataset.root=$HOME/photos` needs no photos. The composed config is then checked against tlexp's rule
table (`tlexp.config.validate.problems`), which `--cfg job` skips, so a bad value (`data.batch_size=0`) fails too.

Hydra refuses `-m` together with `--cfg` ("Only one of --run, --multirun, --cfg ..."), so a multirun command is
checked as single runs without `-m` that between them take every value of every sweep (`strategy=a,b,c` gives three
runs, each other sweep cycling alongside).

Every `--cfg job` run imports torch and Lightning (about 7 s on the 2-core build machine), so by default one
subprocess runs all the commands in turn, each as `python -m` would run it (`runpy.run_module(..., "__main__")`
with its own sys.argv). TLEXP_DOCS_ISOLATED=1 runs each one as its own `python -m tlexp.<entry> ... --cfg job`
process instead (slower; the rule-table check is then left out).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_FILES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 220
COMMAND = re.compile(r"^python3?\s+-m\s+tlexp\.(train|advise|compare|inspect|audit|plan)\b(.*)$")
PLACEHOLDERS = ("...", "<", ">")

# Commands that tlexp's own checks refuse before Hydra sees `--cfg job`; skipped here:
#   python -m tlexp.train resume=outputs/2025-01-31/10-00-00_gradual_efficientnet_lite0   (docs/resuming.md)
#     `resume=` is checked first (tlexp.run.resume.check_resume_argv: exit 2, the run directory does not exist).
PRE_HYDRA_REFUSED = {"python -m tlexp.train resume=outputs/2025-01-31/10-00-00_gradual_efficientnet_lite0"}

RESULTS = "@@tlexp-docs-results@@"
RUNNER = r"""
import contextlib, io, json, runpy, sys
from hydra.core.global_hydra import GlobalHydra

results = []
for entry, args, validate in json.loads(sys.argv[1]):
    out, err, status = io.StringIO(), io.StringIO(), 0
    sys.argv = [f"tlexp.{entry}", *args, "--cfg", "job"]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module(f"tlexp.{entry}", run_name="__main__", alter_sys=True)
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException as crash:  # noqa: BLE001 - reported as the command's failure
            status = 1
            print(f"{type(crash).__name__}: {crash}", file=sys.stderr)
        finally:
            GlobalHydra.instance().clear()
        if status == 0 and validate:
            try:
                from tlexp.config.cli import compose_config
                from tlexp.config.validate import problems

                found = problems(compose_config(entry, args), cuda_available=True)
            except Exception as crash:  # noqa: BLE001 - a ConfigError from composing, say
                found = [f"{type(crash).__name__}: {crash}"]
            if found:
                status = 2
                print("tlexp error (rule table): " + "; ".join(found), file=sys.stderr)
    results.append({"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()})
print("@@tlexp-docs-results@@" + json.dumps(results))
"""


def fenced_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) inside ``` fences, a line ending in a backslash joined with the next."""
    found, inside, pending, start = [], False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        found.append((start, pending + line))
        pending = ""
    return found


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, entry point, arguments) of every distinct documented command without a placeholder."""
    commands, seen = [], set()
    for path in DOC_FILES:
        for number, line in fenced_lines(path.read_text()):
            line = line.strip().removeprefix(".venv/bin/")
            match = COMMAND.match(line)
            if line.startswith("make") or not match:
                continue
            entry = match.group(1)
            args = shlex.split(os.path.expandvars(match.group(2)), comments=True)
            command = shlex.join(["python", "-m", f"tlexp.{entry}", *args])
            if any(p in a for a in args for p in PLACEHOLDERS) or command in PRE_HYDRA_REFUSED:
                continue
            if (entry, tuple(args)) not in seen:
                seen.add((entry, tuple(args)))
                commands.append((f"{path.relative_to(ROOT)}:{number}", entry, args))
    return commands


def single_runs(args: list[str]) -> list[list[str]]:
    """A command's arguments as single runs: itself, or for a multirun the runs that cover every swept value."""
    if not {"-m", "--multirun"} & set(args):
        return [args]
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    parsed = OverridesParser.create().parse_overrides(overrides)
    values = {o.input_line: list(o.sweep_string_iterator()) for o in parsed if o.is_sweep_override()}
    if not values:
        return [overrides]
    runs = []
    for i in range(max(len(v) for v in values.values())):
        run = []
        for o in parsed:
            swept = values.get(o.input_line)
            run.append(f"{o.get_key_element()}={swept[i % len(swept)]}" if swept else o.input_line)
        runs.append(run)
    return runs


def run_all(jobs: list[tuple[str, list[str]]]) -> list[dict]:
    """Each (entry point, arguments) with `--cfg job` appended: exit status, stdout and stderr."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    if os.environ.get("TLEXP_DOCS_ISOLATED") == "1":
        results = []
        for entry, args in jobs:
            done = subprocess.run(
                [sys.executable, "-m", f"tlexp.{entry}", *args, "--cfg", "job"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            results.append({"status": done.returncode, "stdout": done.stdout, "stderr": done.stderr})
        return results
    payload = json.dumps([(entry, args, True) for entry, args in jobs])
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, payload], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"the command runner failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    line = next(x for x in done.stdout.splitlines() if x.startswith(RESULTS))
    return json.loads(line.removeprefix(RESULTS))


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines, at most {MAX_README_LINES}: move a section to docs/"
    )


def test_documented_commands_are_accepted():
    commands = documented_commands()
    where = {c[0] for c in commands}
    assert len(commands) >= 10 and any(w.startswith("README.md") for w in where), commands
    jobs, origin = [], []
    for place, entry, args in commands:
        for run in single_runs(args):
            jobs.append((entry, run))
            origin.append((place, shlex.join(["python", "-m", f"tlexp.{entry}", *args])))
    failed = []
    for (place, command), (entry, run), result in zip(origin, jobs, run_all(jobs), strict=True):
        if result["status"] != 0 or "tlexp error" in result["stdout"] + result["stderr"]:
            as_run = shlex.join(["python", "-m", f"tlexp.{entry}", *run, "--cfg", "job"])
            tail = (result["stderr"].strip() or result["stdout"].strip())[-1500:]
            failed.append(f"{place}: {command}\n  ran: {as_run}\n  exit {result['status']}: {tail}")
    assert not failed, f"{len(failed)} documented command(s) refused:\n\n" + "\n\n".join(failed)


@pytest.mark.parametrize("args, runs", [(["seed=1"], 1), (["-m", "strategy=a,b,c", "seed=1,2"], 3)])
def test_single_runs_cover_every_swept_value(args, runs):
    got = single_runs(args)
    assert len(got) == runs and all("-m" not in r for r in got)
    if runs == 3:
        assert [r[0] for r in got] == ["strategy=a", "strategy=b", "strategy=c"]
        assert {r[1] for r in got} == {"seed=1", "seed=2"}


def test_configuration_reference_is_current(tmp_path):
    fresh = tmp_path / "configuration.md"
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_config_reference.py"), str(fresh)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert fresh.read_text() == (ROOT / "docs" / "configuration.md").read_text(), (
        "docs/configuration.md is out of date: run `make docs` (or .venv/bin/python docs/gen_config_reference.py)"
    )


# Documented commands cheap enough to run for real: they train nothing (the size rule reads the split sizes only).
CHEAP = [("advise", ["strategy.budget=0"])]


@pytest.mark.parametrize(("entry", "args"), CHEAP)
def test_the_cheap_documented_commands_run_for_real(entry, args, tmp_path):
    assert any((e, a) == (entry, args) for _, e, a in documented_commands()), "no longer documented: drop it here"
    proc = subprocess.run(
        [sys.executable, "-m", f"tlexp.{entry}", *args], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "advice: 1000 training images, 10 classes" in proc.stdout
    assert "run it: python -m tlexp.train strategy=" in proc.stdout  # the command it prints for the user to copy
