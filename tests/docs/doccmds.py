"""Every shell command the docs show, found and checked.

A command is a line of a ```` ```bash ```` block in ``docs/**/*.md`` or ``README.md`` (a
``\\`` continues it; ``# ...`` ends it). What each one gets:

- ``segexp <command> ...`` (also ``python train.py``, ``python -m segexp.<tool>``): the
  command must exist; a Hydra command's overrides are **composed** against ``segexp/conf``
  (every ``group=option`` must be an option there, every ``key=value`` a key, ``hydra/...``
  and ``hydra.*`` included; a ``-m`` sweep composes each listed value); ``compare`` and
  ``new`` arguments are parsed by their own parsers. Placeholders such as
  ``outputs/<date>/<time>`` or ``...`` stand for any value.
- ``make <target>``: the target must be in the Makefile.
- anything else: its program must be one of ``EXTERNAL`` (a typo in a command name fails).

A block right after the line ``<!-- docs-test: run -->`` is **run**, top to bottom, in one
fresh folder, each command with exit 0 expected: ``segexp train`` gets ``QUICK`` appended
(tiny data, one epoch), and ``outputs/<date>/<time>`` stands for the newest training run.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# A marker on the line before a block: run it, or compose it inside a project of `segexp new`.
MARK = re.compile(r"^<!-- docs-test: (run|project) -->$")
# Programs other than segexp and make that the docs may show (installed by segexp or the
# usual tools of the trade); a command whose program is not here and not segexp fails.
EXTERNAL = {
    "cd", "source", "export", "for", "done", "pip", "git", "rsync", "sbatch", "squeue", "pytest",
    "wandb", "tensorboard", "mlflow", "optuna-dashboard", "scripts/local_slurm.sh", "python",
    "chromium", "mkdocs",
}  # fmt: skip
HYDRA_COMMANDS = {  # segexp command -> its config in segexp/conf
    "train": "train", "eval": "eval", "predict": "predict", "export": "export",
    "check": "check", "browse": "browse", "tune-crf": "tune_crf", "weights": "train",
}  # fmt: skip
LEGACY_SCRIPTS = {"train.py": "train", "evaluate.py": "eval", "predict.py": "predict"}
# What `segexp train` gets appended when a docs block is run: the tiny shapes data, 1 epoch.
QUICK = [
    "data.generate.num_train=8", "data.generate.num_val=4", "data.generate.num_test=4",
    "data.batch_size=4", "data.num_workers=0", "trainer.max_epochs=1",
    "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "logger=csv",
]  # fmt: skip
PLACEHOLDER = re.compile(r"<([^<>\s]+)>")


@dataclass
class Command:
    """One documented command: where it is, its words, and whether its block is run."""

    page: Path
    line: int
    text: str
    mark: str | None = None  # "run" or "project": the marker of its block
    words: list[str] = field(default_factory=list)
    block: int = 0  # the line of its block's opening fence

    @property
    def run(self) -> bool:
        return self.mark == "run"

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page}:{self.line}"


def pages(root: Path = ROOT) -> list[Path]:
    """The documentation pages: the README and every page of the site."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def commands(page: Path) -> list[Command]:
    """The commands in ``page``'s bash blocks, in order."""
    found: list[Command] = []
    lines = page.read_text().splitlines()
    in_bash = in_fence = False
    mark, pending, start, previous, block = None, "", 0, "", 0
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            if not in_fence:
                in_fence, in_bash = True, stripped[3:].strip().split(" ")[0] in ("bash", "sh")
                marked = MARK.match(previous)
                mark, block = (marked.group(1) if marked else None), number
            else:
                in_fence = in_bash = False
            continue
        if stripped:
            previous = stripped if not in_fence else previous
        if not in_bash:
            continue
        if not pending:
            start = number
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        text, pending = pending.strip(), ""
        if not text or text.startswith("#"):
            continue
        for words in split_commands(text):
            found.append(Command(page, start, text, mark, words, block))
    return found


def split_commands(text: str) -> list[list[str]]:
    """The commands of one shell line: ``a && b`` is two, ``sbatch --wrap "cmd"`` adds cmd."""
    words = shlex.split(text, comments=True)
    out, current = [], []
    for word in words:
        if word in ("&&", ";", "||"):
            out.append(current)
            current = []
        elif word.endswith(";") and len(word) > 1:
            current.append(word[:-1])
            out.append(current)
            current = []
        else:
            current.append(word)
    out.append(current)
    for cmd in list(out):
        if cmd[:1] == ["sbatch"] and "--wrap" in cmd:
            out += split_commands(cmd[cmd.index("--wrap") + 1])
    return [cmd for cmd in out if cmd and cmd[0] not in ("for", "do", "done")]


def segexp_argv(words: list[str]) -> list[str] | None:
    """``[command, *args]`` when ``words`` run a segexp command, else None."""
    program = words[0]
    if program.endswith("segexp"):
        return words[1:]
    if program.endswith("python") or program.endswith("python3"):
        rest = words[1:]
        if rest[:1] and rest[0] in LEGACY_SCRIPTS:
            return [LEGACY_SCRIPTS[rest[0]], *rest[1:]]
        if rest[:2] and rest[0] == "-m" and rest[1].startswith("segexp"):
            tool = rest[1].removeprefix("segexp").lstrip(".") or None
            return [tool.replace("_", "-"), *rest[2:]] if tool else rest[2:]
    return None


def make_targets(makefile: Path = ROOT / "Makefile") -> set[str]:
    return set(re.findall(r"^([a-z][a-z0-9-]*):", makefile.read_text(), re.MULTILINE))


def fill(value: str) -> str:
    """A placeholder (``<date>``, ``...``) stands for any value: make it a plain one."""
    return PLACEHOLDER.sub(lambda m: m.group(1).replace("|", "_"), value).replace("...", "x")


def sweep_variants(overrides: list[str]) -> list[list[str]]:
    """A ``-m`` sweep's overrides, one list per value of each swept key (``a=x,y``)."""

    def values(override: str) -> list[str]:
        key, sep, value = override.partition("=")
        if not sep or key.startswith("hydra.") or re.match(r"^\w+\(", value) or "[" in value:
            return [override]
        return [f"{key}={part}" for part in value.split(",")]

    options = [values(o) for o in overrides]
    variants = [[opts[0] for opts in options]]
    for index, opts in enumerate(options):
        for alternative in opts[1:]:
            variant = [opts[0] for opts in options]
            variant[index] = alternative
            variants.append(variant)
    return variants


def check(command: Command) -> str | None:
    """Why ``command`` would not work as documented, or None."""
    words = command.words
    argv = segexp_argv(words)
    if argv is None:
        if words[0] == "make":
            missing = [t for t in words[1:] if "=" not in t and t not in make_targets()]
            return f"make: no target {missing}" if missing else None
        program = words[0] if "/bin/" not in words[0] else words[0].rsplit("/", 1)[1]
        return None if program in EXTERNAL else f"unknown program {words[0]!r}"
    return check_segexp(argv)


def check_segexp(argv: list[str]) -> str | None:
    from segexp.cli.main import ALIASES, COMMANDS

    if not argv or argv[0] in ("--help", "-h", "--version"):
        return None
    name = ALIASES.get(argv[0], argv[0])
    if name not in COMMANDS:
        return f"segexp has no command {argv[0]!r}"
    args = [fill(a) for a in argv[1:]]
    if name in ("compare", "new"):
        return parse_args(name, args)
    if name == "weights":
        if args[:1] != ["fetch"]:
            return "segexp weights: the sub-command is `fetch`"
        from segexp.cli.weights import _split_encoders

        args = _split_encoders(args[1:])[0]
    return compose_args(HYDRA_COMMANDS[name], args)


def parse_args(name: str, args: list[str]) -> str | None:
    import importlib

    parser = importlib.import_module(f"segexp.cli.{name}").build_parser()
    try:
        parser.parse_args(args)
    except SystemExit as stop:
        return f"segexp {name} refuses {args}" if stop.code else None
    return None


def compose_args(config: str, args: list[str]) -> str | None:
    """Compose ``config`` with the command's overrides; Hydra's complaint, or None."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from segexp.cli.argv import translate_check_flags, translate_legacy_flags
    from segexp.configs import CONF_DIR

    args = translate_check_flags(translate_legacy_flags(args))
    multirun = any(a in ("-m", "--multirun") for a in args)
    if "--cfg" in args:
        del args[args.index("--cfg") : args.index("--cfg") + 2]
    overrides = [a for a in args if a not in ("-m", "--multirun", "--help", "-h")]
    if any(a.startswith("-") for a in overrides):
        return f"unknown flag in {overrides}"
    GlobalHydra.instance().clear()  # a test before this one may have left Hydra initialised
    for variant in sweep_variants(overrides) if multirun else [overrides]:
        try:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                compose(config_name=config, overrides=variant, return_hydra_config=True)
        except Exception as error:  # Hydra's own message says which key or option
            return f"{type(error).__name__}: {str(error).splitlines()[0]}"
    return None
