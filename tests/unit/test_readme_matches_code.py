"""README.md against the code it describes, so drift fails CI: deploy.sh's action table, option lists
and --help; setup.sh's options; the argparse definitions of the tools behind each action (flags and
defaults); the CHUTES_*/CHUTE_* environment variables read anywhere; and a few facts README states
in prose (discovery's polling intervals, what an override naming no route does).

Everything is read from its one source (deploy.sh's ACTIONS, the tools' parsers as main() builds
them); nothing here lists a flag by hand except flags of other programs README mentions.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DEPLOY = (ROOT / "deploy.sh").read_text()
SETUP = (ROOT / "setup.sh").read_text()
SHELL_SCRIPTS = [ROOT / "deploy.sh", ROOT / "setup.sh", *sorted((ROOT / "tools").glob("*.sh"))]

FLAG_RE = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
ENV_RE = re.compile(r"\bCHUTES?_[A-Z0-9_]+\b")
GLOBAL_OPTIONS = {"--yes", "--debug", "--help"}  # deploy.sh accepts them with every action
# Flags of other programs that README shows, by the command they belong to. Those of the `chutes`
# CLI are checked against its own Typer app; the container engine's are not (it may not be installed).
ENGINE_FLAGS = {"--cgroup-manager", "--runtime"}
# Variables the code uses that are no setting of the user's, so README's table leaves them out.
INTERNAL_ENV = {
    "CHUTES_DEV_MODE": "the SDK's own; tools/runtime/sdk/node.py clears it after the SDK sets it",
    "CHUTES_LOCAL_PLATFORM_KEY": "handed by tools/platform/gateway.py to the node process it starts for --run",
}


# --------------------------------------------------------------------------------------------------
# deploy.sh and setup.sh, read from their own text


@dataclass
class Action:
    flag: str
    args: str
    options: list[str] = field(default_factory=list)


def bash_array(name: str) -> list[str]:
    match = re.search(rf"^{name}=\((.*?)\)[ \t]*(?:#.*)?$", DEPLOY, re.M | re.S)
    assert match, f"deploy.sh has no {name}=(...)"
    return shlex.split(match.group(1), comments=True)


@functools.cache
def actions() -> dict[str, Action]:
    result = {}
    for row in bash_array("ACTIONS"):
        _, flag, args, _, _ = row.split("|")
        result[flag] = Action(flag, args, FLAG_RE.findall(args))
    return result


def bash_functions(text: str) -> dict[str, str]:
    """name -> body of every `name() { ... }` (one-line or block) in a Bash script."""
    found = {name: body for name, body in re.findall(r"^(\w+)\(\) \{ (.*) \}$", text, re.M)}
    found.update(re.findall(r"^(\w+)\(\) \{\n(.*?)^\}", text, re.M | re.S))
    return found


def command_function(flag: str) -> str:
    return "cmd_" + flag.removeprefix("--").replace("-", "_")


@functools.cache
def action_tools() -> dict[str, list[tuple[str, str | None]]]:
    """Action flag -> the (tools module, subcommand) its cmd_ function runs, helpers followed once."""
    functions = bash_functions(DEPLOY)
    # `tool MODULE [SUB]`, `exec_tool MODULE`, or `cmd=(MODULE [SUB] ...)` / `X_CMD=(...)` run later
    tool_call = re.compile(r'(?:\b(?:exec_tool|tool)\s+|\b\w*(?:cmd|CMD)=\()"?([a-z_.]+)"?(?:\s+([a-z][a-z-]*))?')
    result = {}
    for flag in actions():
        body = functions.get(command_function(flag), "")
        bodies = [body] + [functions[name] for name in re.findall(r"^\s*(?:if !? ?)?(\w+) ", body, re.M)
                           if name in functions and not name.startswith("cmd_") and name != command_function(flag)]
        tools = []
        for text in bodies:
            for match in tool_call.finditer(text):
                module, sub = match.group(1), match.group(2)
                if (ROOT / "tools" / (module.replace(".", "/") + ".py")).is_file():
                    tools.append((module, sub))
        result[flag] = list(dict.fromkeys(tools))
    return result


@functools.cache
def deploy_help() -> str:
    proc = subprocess.run(["bash", str(ROOT / "deploy.sh"), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@functools.cache
def setup_help() -> str:
    proc = subprocess.run(["bash", str(ROOT / "setup.sh"), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def setup_parsed_flags() -> set[str]:
    """The flags setup.sh's parse_args accepts (its case patterns)."""
    body = bash_functions(SETUP)["parse_args"]
    patterns = re.findall(r"^\s+([-\w|= *]+)\)", body, re.M)
    return {flag for pattern in patterns for flag in FLAG_RE.findall(pattern)}


# --------------------------------------------------------------------------------------------------
# The tools' argparse definitions, as their main() builds them


class _Built(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


@functools.cache
def tool_parser(module: str) -> argparse.ArgumentParser:
    """The parser `python -m tools.MODULE` parses its arguments with (main() stopped right there)."""
    mod = importlib.import_module(f"tools.{module}")
    if callable(getattr(mod, "parser", None)):
        return mod.parser()

    def stop(self, *args, **kwargs):
        raise _Built(self)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = stop
    try:
        mod.main([])
    except _Built as built:
        return built.parser
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"tools.{module}.main() parsed no arguments")


def subparser(parser: argparse.ArgumentParser, sub: str | None) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            if sub is None:
                raise AssertionError(f"{parser.prog} needs a subcommand")
            return action.choices[sub]
    return parser


def options_of(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    found = {}
    for action in parser._actions:
        for option in action.option_strings:
            found[option] = action
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                for option, child_action in options_of(child).items():
                    found.setdefault(option, child_action)
    return found


def tools_with_parsers() -> list[str]:
    return sorted(
        ".".join(path.relative_to(ROOT / "tools").with_suffix("").parts) for path in (ROOT / "tools").rglob("*.py")
        if "argparse" in path.read_text() and re.search(r"^def main\(", path.read_text(), re.M)
    )


@functools.cache
def all_tool_options() -> dict[str, list[argparse.Action]]:
    found: dict[str, list[argparse.Action]] = {}
    for module in tools_with_parsers():
        for option, action in options_of(tool_parser(module)).items():
            found.setdefault(option, []).append(action)
    return found


def effective_default(action: argparse.Action) -> str | None:
    """The default a user gets: argparse's, or the one its help states when argparse's is None
    (options whose default depends on other options, or is decided later)."""
    if action.default not in (None, [], False, argparse.SUPPRESS):
        return str(action.default)
    text = action.help or ""
    match = re.search(r"\bdefault:? ([0-9][0-9.]*)", text) or re.match(r"(\S+) \(default\b", text)
    return match.group(1) if match else None


def same_value(documented: str, code: str) -> bool:
    try:
        return float(documented) == float(code)
    except ValueError:
        return documented == code


# --------------------------------------------------------------------------------------------------
# README's commands: code blocks and inline code, split into one command each


@dataclass
class Command:
    program: str  # "deploy.sh", "setup.sh", "tools.<module>", "chutes <sub>", or "" (anything else)
    words: list[str]
    text: str


def readme_command_texts() -> list[str]:
    texts = []
    for language, block in re.findall(r"^```(\w*)\n(.*?)^```$", README, re.M | re.S):
        if language not in ("bash", "sh", ""):
            continue
        joined = block.replace("\\\n", " ")
        texts += [re.sub(r"\s#\s.*$", "", line) for line in joined.splitlines()]
    prose = re.sub(r"^```\w*\n.*?^```$", "", README, flags=re.M | re.S)
    texts += re.findall(r"`([^`\n]+)`", prose)
    return [text.strip() for text in texts if text.strip()]


def readme_commands() -> list[Command]:
    commands = []
    for text in readme_command_texts():
        previous = ""
        for segment in re.split(r"\s*(?:&&|;|\s\|\s)\s*", text):
            words = segment.split()
            if not words:
                continue
            head = words[0].rsplit("/", 1)[-1]
            if head == "deploy.sh" or (previous == "deploy.sh" and words[0].startswith("--")):
                program = "deploy.sh"
                words = words[1:] if head == "deploy.sh" else words
            elif head == "setup.sh":
                program, words = "setup.sh", words[1:]
            elif head in ("python", "python3") and words[1:2] == ["-m"] and words[2:3] \
                    and words[2].startswith("tools."):
                program, words = words[2], words[3:]
            elif head == "chutes" and len(words) > 1:
                program, words = f"chutes {words[1]}", words[2:]
            else:
                program = ""
            commands.append(Command(program, words, segment))
            previous = program
    return commands


def deploy_commands() -> list[tuple[str, Command]]:
    """(action, command) for README's deploy.sh commands that name an action."""
    result = []
    for command in readme_commands():
        if command.program == "deploy.sh":
            named = [word for word in command.words if word in actions()]
            if named:
                result.append((named[0], command))
    return result


# --------------------------------------------------------------------------------------------------
# deploy.sh's table, option lists and --help agree with each other and with the tools behind them


def test_every_option_of_the_table_is_parsed_and_every_parsed_option_is_used():
    value_options, flag_options = set(bash_array("VALUE_OPTIONS")), set(bash_array("FLAG_OPTIONS"))
    used = {option for action in actions().values() for option in action.options}
    assert used <= value_options | flag_options, "ACTIONS names options deploy.sh cannot parse"
    assert (value_options | flag_options) - GLOBAL_OPTIONS <= used, "VALUE/FLAG_OPTIONS that no action takes"
    assert set(bash_array("NUMBER_OPTIONS")) <= value_options
    assert not value_options & flag_options


def test_every_action_and_option_is_in_deploy_sh_help():
    text = deploy_help()
    for flag, action in actions().items():
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), flag
        for option in action.options:
            assert option in text, (flag, option)
    for option in [*bash_array("VALUE_OPTIONS"), *bash_array("FLAG_OPTIONS")]:
        assert option in text, option


def test_every_action_runs_a_tool_that_accepts_the_options_deploy_sh_passes_on():
    passthrough = set(bash_array("PASSTHROUGH_ACTIONS"))
    for flag, action in actions().items():
        if flag == "--help":
            continue
        tools = action_tools()[flag]
        assert tools, f"no tools.<module> found in {command_function(flag)}"
        for option in action.options:
            if option in GLOBAL_OPTIONS:
                continue
            accepted = [options_of(subparser(tool_parser(module), sub)) for module, sub in tools]
            assert any(option in found for found in accepted), f"{flag} {option}: not an option of {tools}"
        if flag in passthrough:
            assert len(tools) == 1, (flag, tools)


def test_number_options_are_numbers_in_the_tools():
    for flag, action in actions().items():
        for option in set(action.options) & set(bash_array("NUMBER_OPTIONS")):
            for module, sub in action_tools()[flag]:
                found = options_of(subparser(tool_parser(module), sub)).get(option)
                if found is not None:
                    # deploy.sh checks the value is a number; the tool must take it as one
                    parse = found.type or str
                    assert isinstance(parse("100"), (int, float)), (flag, option, module, found.type)


def help_option_entries() -> dict[str, str]:
    """deploy.sh --help's Options section: option -> its text (continuation lines joined)."""
    section = deploy_help().split("\nOptions:\n", 1)[1].split("\n\n", 1)[0]
    entries: dict[str, str] = {}
    current = None
    for line in section.splitlines():
        match = re.match(r"  (--[a-z-]+)(?:, -\w)?(?: [A-Z]+)?\s+(.*)$", line)
        if match:
            current = match.group(1)
            entries[current] = match.group(2)
        elif current:
            entries[current] += " " + line.strip()
    return entries


def test_deploy_sh_help_states_the_defaults_of_the_tools_behind_each_action():
    checked = 0
    for option, text in help_option_entries().items():
        named = re.match(r"((?:--[a-z-]+, )*--[a-z-]+): (.*)", text)
        stated: list[tuple[list[str], str]] = []
        if named:
            scope, rest = named.group(1).split(", "), named.group(2)
            for action_flag in scope:
                assert option in actions()[action_flag].options, f"--help: {option} is not an option of {action_flag}"
            value = re.search(r"\(default ([^):,]+)\)", rest) or re.match(r"(\S+) \(default\b", rest)
            if value:
                stated.append((scope, value.group(1)))
        for scope, value in re.findall(r"\(((?:--[a-z-]+, )*--[a-z-]+): ([^)]+)\)", text):
            stated.append((scope.split(", "), value))
        for scope, value in stated:
            for action_flag in scope:
                assert option in actions()[action_flag].options, f"--help: {option} is not an option of {action_flag}"
                for module, sub in action_tools()[action_flag]:
                    found = options_of(subparser(tool_parser(module), sub)).get(option)
                    if found is None:
                        continue
                    default = effective_default(found)
                    assert default is not None and same_value(value, default), (
                        f"deploy.sh --help says {action_flag} {option} defaults to {value};"
                        f" tools.{module} says {default}"
                    )
                    checked += 1
    assert checked >= 5  # --port x3, --timeout x4, --gpus: the parsing above found them


# --------------------------------------------------------------------------------------------------
# README against deploy.sh, setup.sh and the tools


def test_every_deploy_sh_action_and_option_appears_in_readme():
    words = set(FLAG_RE.findall(README))
    for flag, action in actions().items():
        assert flag in words, f"README never mentions deploy.sh {flag}"
        for option in action.options:
            assert option in words, f"README never mentions deploy.sh {option}"
    for option in [*bash_array("VALUE_OPTIONS"), *bash_array("FLAG_OPTIONS")]:
        assert option in words, option


def test_every_option_of_every_action_is_shown_on_a_readme_command_line_of_that_action():
    shown: dict[str, set[str]] = {}
    for action, command in deploy_commands():
        shown.setdefault(action, set()).update(FLAG_RE.findall(command.text))
    for flag, action in actions().items():
        if flag == "--help":
            continue
        assert flag in shown, f"README shows no ./deploy.sh {flag} command"
        missing = set(action.options) - shown[flag]
        assert not missing, f"README's ./deploy.sh {flag} lines never show {sorted(missing)}"


def test_readme_deploy_sh_commands_use_only_options_their_action_takes():
    passthrough = set(bash_array("PASSTHROUGH_ACTIONS"))
    for action, command in deploy_commands():
        allowed = set(actions()[action].options) | GLOBAL_OPTIONS | {action}
        if action in passthrough:
            (module, sub), = action_tools()[action]
            allowed |= set(options_of(subparser(tool_parser(module), sub)))
        used = set(FLAG_RE.findall(command.text))
        assert used <= allowed, f"README: {command.text!r} uses {sorted(used - allowed)}, not options of {action}"
        assert sum(word in actions() for word in command.words if word != action) == 0, command.text


def test_readme_setup_sh_and_tool_commands_use_existing_options():
    setup_flags = set(FLAG_RE.findall(setup_help()))
    for command in readme_commands():
        used = set(FLAG_RE.findall(command.text))
        if command.program == "setup.sh":
            assert used <= setup_flags, (command.text, used - setup_flags)
        elif command.program.startswith("tools."):
            known = set(options_of(tool_parser(command.program.removeprefix("tools."))))
            assert used <= known, (command.text, used - known)


@functools.cache
def chutes_cli_options(sub: str) -> set[str]:
    """The options of `chutes SUB`, from the CLI's own Typer app (what `chutes SUB --help` lists)."""
    from tools.runtime.sdk.rules import cli_options

    return cli_options(sub)


def test_readme_chutes_cli_commands_use_options_the_cli_has():
    for command in readme_commands():
        if command.program.startswith("chutes "):
            for flag in FLAG_RE.findall(command.text):
                assert flag in chutes_cli_options(command.program.split()[1]), (command.text, flag)


def test_every_flag_readme_names_exists():
    ours = set(all_tool_options()) | set(FLAG_RE.findall(deploy_help())) | set(FLAG_RE.findall(setup_help()))
    chutes_flags = {flag for command in readme_commands() if command.program.startswith("chutes ")
                    for flag in FLAG_RE.findall(command.text)}
    unknown = set(FLAG_RE.findall(README)) - ours - chutes_flags - ENGINE_FLAGS
    assert not unknown, f"README names flags nothing defines: {sorted(unknown)}"


def test_setup_sh_help_and_parser_agree():
    assert set(FLAG_RE.findall(setup_help())) == setup_parsed_flags()


def readme_stated_defaults() -> list[tuple[str, str]]:
    stated = re.findall(r"`(--[a-z][a-z0-9-]*)` \(default ([^ )]+)", README)
    stated += re.findall(r"`(--[a-z][a-z0-9-]*)` defaults to `([^`]+)`", README)
    return stated


def test_defaults_readme_states_are_the_tools_defaults():
    stated = readme_stated_defaults()
    assert len(stated) >= 3  # --startup-delay, --probe-timeout, --docker-gpus today
    for flag, value in stated:
        defaults = [effective_default(action) for action in all_tool_options().get(flag, [])]
        defaults = [default for default in defaults if default is not None]
        assert defaults, f"README states a default for {flag}, which no tool defines with a default"
        for default in defaults:
            assert same_value(value, default), f"README: {flag} defaults to {value}; the code: {default}"


# --------------------------------------------------------------------------------------------------
# Environment variables


def readme_table(heading: str) -> list[str]:
    """First-column names of the table under `### heading`."""
    section = README.split(f"### {heading}\n", 1)[1].split("\n#", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, re.M)


def module_variables() -> set[str]:
    return set(readme_table("Module variables"))


def code_env_names() -> dict[str, set[str]]:
    """CHUTES_*/CHUTE_* names in tools/ (string constants, keyword names) and the shell scripts."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "tools").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            texts = []
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                texts.append(node.value)
            elif isinstance(node, ast.keyword) and node.arg:
                texts.append(node.arg)
            for text in texts:
                for name in ENV_RE.findall(text):
                    found.setdefault(name, set()).add(path.name)
    for path in SHELL_SCRIPTS:
        for name in ENV_RE.findall(path.read_text()):
            found.setdefault(name, set()).add(path.name)
    return {name: files for name, files in found.items() if name not in module_variables()}


def test_every_env_var_readme_names_is_read_by_the_code():
    documented = set(ENV_RE.findall(README)) - module_variables()
    missing = documented - set(code_env_names())
    assert not missing, f"README names variables no tool or script uses: {sorted(missing)}"


def test_every_env_var_the_code_reads_is_in_readmes_table():
    table = set(readme_table("Environment variables"))
    assert set(INTERNAL_ENV) <= set(code_env_names()), "an internal variable the code no longer uses"
    missing = set(code_env_names()) - table - set(INTERNAL_ENV)
    assert not missing, f"variables the code uses that README's table lacks: {sorted(missing)}"
    assert table <= set(code_env_names()) | module_variables()


# --------------------------------------------------------------------------------------------------
# Facts README states in prose


def test_discovery_polling_intervals_are_the_codes():
    from tools import discover_routes

    interval = r"([0-9.]+) (ms|s)"
    match = re.search(rf"polled at once, every\s+{interval} \(a path that answered 404:\s+every\s+{interval}\)", README)
    assert match, "README's discovery section no longer states the polling intervals"
    seconds = [float(value) / (1000 if unit == "ms" else 1) for value, unit in (match.group(1, 2), match.group(3, 4))]
    assert seconds == [discover_routes.POLL_INTERVAL, discover_routes.ABSENT_INTERVAL]


def test_an_override_naming_no_route_is_documented_as_the_warning_it_is(caplog_loguru):
    from chutes.chute import Chute

    from tools import chute_wrappers
    from tools.runtime.routes import Route

    sentence = re.search(r"a key that names no (?:loaded )?route is ([^.(]+)", README)
    assert sentence and "warning" in sentence.group(1) and "error" not in sentence.group(1), sentence
    chute = Chute(username="tester", name="readme", image="unused")
    chute_wrappers.register_passthrough_routes(chute, [Route("/a")], 8020, overrides={"POST /b": {"mode": "proxy"}})
    assert any("CHUTE_ROUTE_OVERRIDES['POST /b'] names no loaded route" in m and "WARNING" in m for m in caplog_loguru)
    with pytest.raises(Exception):
        chute_wrappers.register_passthrough_routes(chute, [Route("/a")], 8020, overrides={"b": {"mode": "proxy"}})
