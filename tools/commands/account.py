"""Your Chutes account: show it (with the balance), save an API key, link an existing account's hotkey.

    python -m tools.commands.account info          # deploy.sh --account
    python -m tools.commands.account set-api-key   # deploy.sh --set-api-key (asked without echo)
    python -m tools.commands.account link          # setup.sh --link-hotkey, deploy.sh --link-hotkey

Secrets are read without echo (or from stdin when it is not a terminal), never printed, never put on
a command line. Files are written atomically with mode 600, after a timestamped backup of the old one.
"""

from __future__ import annotations

import argparse
import configparser
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from tools import chutes_api
from tools.chutes_api import Account, APIError, Client
from tools.runtime.errors import WrapperError, run_cli
from tools.private_files import write_private

PROG = "deploy.sh"
REMOTE_BUILD_MINIMUM_USD = 50
SEED_RE = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")


# --------------------------------------------------------------------------------------------------
# Private files


def ask_secret(prompt: str) -> str:
    """A secret from the terminal without echo, or the first line of stdin when it is not a terminal."""
    if sys.stdin.isatty():
        import getpass

        try:
            return getpass.getpass(prompt).strip()
        except EOFError:
            return ""
    return sys.stdin.readline().strip()


def ask(prompt: str, default: str = "") -> str:
    try:
        answer = input(prompt).strip()
    except EOFError:
        answer = ""
    return answer or default


# --------------------------------------------------------------------------------------------------
# info


@dataclass
class AccountCommand:
    """One run of this CLI (deploy.sh --account, --set-api-key, --link-hotkey)."""

    command: str
    debug: bool = False
    no_check: bool = False
    hotkey_file: str | None = None
    wallets_path: str = str(Path.home() / ".bittensor" / "wallets")
    hotkey_name: str = "default"
    api_url: str | None = None


def info(args: AccountCommand) -> int:
    path = chutes_api.config_path()
    account = chutes_api.load_account(required=True)
    assert account is not None
    key = chutes_api.load_api_key()
    base = chutes_api.api_base_url()
    rows = [
        ("Config", str(path)),
        ("API", base),
        ("Username", account.username or "(not in the config)"),
        ("User id", account.user_id or "(not in the config)"),
        ("Hotkey", f"{account.hotkey_ss58}" + (f" ({account.hotkey_name})" if account.hotkey_name else "")),
        ("API key", f"set (from {key[1]})" if key else "not set (./deploy.sh --set-api-key)"),
    ]
    print_rows(rows)
    me = Client(account=account, base_url=base).me()
    balance = me.get("balance")
    rows = [("Payment address", str(me.get("payment_address") or account.payment_address or "-"))]
    if isinstance(balance, (int, float)):
        rows.insert(0, ("Balance", f"${balance:,.2f}"))
        if balance < REMOTE_BUILD_MINIMUM_USD:
            rows.append(("Note", f"remote builds need a balance of at least ${REMOTE_BUILD_MINIMUM_USD}; "
                                 "use --build MODULE --local meanwhile"))
    else:
        rows.insert(0, ("Balance", "(not in the API's answer)"))
    if me.get("username") and account.username and me["username"] != account.username:
        rows.append(("Warning", f"the API knows this hotkey as {me['username']!r}, the config says {account.username!r}"))
    print_rows(rows)
    return 0


def print_rows(rows: list[tuple[str, str]]) -> None:
    for label, value in rows:
        print(f"  {label + ':':<17} {value}")


def check(args: AccountCommand) -> int:
    """Exit 1 with how to get an account when there is none (deploy.sh asks this before its questions)."""
    chutes_api.load_account(required=True)
    return 0


# --------------------------------------------------------------------------------------------------
# set-api-key


def set_api_key(args: AccountCommand) -> int:
    path = chutes_api.api_key_path()
    key = ask_secret("Chutes API key (cpk_..., input hidden): ")
    if not key:
        raise WrapperError("no API key given; nothing saved")
    if any(ch.isspace() for ch in key) or len(key) < 8:
        raise WrapperError("that does not look like an API key (no spaces, at least 8 characters); nothing saved")
    if not args.no_check:
        try:
            me = Client(api_key=key).me()
        except APIError as exc:
            raise WrapperError(f"the API did not accept this key ({exc}); nothing saved",
                               "check the key, or save it anyway with --no-check") from None
        print(f"the API accepts this key (user {me.get('username', '?')})")
    saved = write_private(path, key + "\n")
    print(f"saved the API key to {path} (mode 600)" + (f"; the previous one is in {saved}" if saved else ""))
    return 0


# --------------------------------------------------------------------------------------------------
# link


def wallet_hotkeys(wallets: Path) -> list[Path]:
    return sorted(p for p in wallets.glob("*/hotkeys/*") if p.is_file())


def seed_from_hotkey_file(path: Path) -> tuple[str, str, str]:
    """(seed, ss58 or '', name) from a bittensor hotkey file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise WrapperError(f"{path} is not a readable bittensor hotkey file (JSON)",
                           "an encrypted hotkey cannot be used; paste the seed instead") from None
    seed = str(data.get("secretSeed") or "") if isinstance(data, dict) else ""
    if not SEED_RE.match(seed):
        raise WrapperError(f"{path} holds no secretSeed", "an encrypted hotkey cannot be used; paste the seed instead")
    return seed.removeprefix("0x"), str(data.get("ss58Address") or ""), path.name


def choose_hotkey(args: AccountCommand) -> tuple[str, str, str]:
    """(seed, expected ss58 or '', hotkey name)."""
    if args.hotkey_file:
        return seed_from_hotkey_file(Path(args.hotkey_file).expanduser())
    files = wallet_hotkeys(Path(args.wallets_path).expanduser()) if sys.stdin.isatty() else []
    if files:
        print("Hotkeys found in your bittensor wallets:")
        for number, path in enumerate(files, 1):
            print(f"  {number}) {path.parent.parent.name}/{path.name}")
        print("  s) paste a hotkey seed instead")
        answer = ask("Choose: ")
        if answer.isdigit() and 1 <= int(answer) <= len(files):
            return seed_from_hotkey_file(files[int(answer) - 1])
        if answer.lower() != "s":
            raise WrapperError(f"no choice {answer!r}; nothing changed")
    seed = ask_secret("Hotkey seed (64 hex characters, input hidden): ")
    if not SEED_RE.match(seed):
        raise WrapperError("that is not a hotkey seed (64 hex characters, optionally 0x-prefixed); nothing changed")
    return seed.removeprefix("0x"), "", args.hotkey_name


def link(args: AccountCommand) -> int:
    from tools.runtime.sdk import keys

    seed, expected, name = choose_hotkey(args)
    ss58 = keys.from_seed(seed).ss58_address
    if expected and expected != ss58:
        raise WrapperError(f"the hotkey file says {expected} but its seed gives {ss58}; nothing changed")
    path = chutes_api.config_path()
    parser = chutes_api.read_config(path) if path.exists() else configparser.ConfigParser(interpolation=None)
    base = (args.api_url or chutes_api.api_base_url(parser)).rstrip("/")
    probe = Account(username="", user_id="", hotkey_ss58=ss58, hotkey_name=name, payment_address="", _seed=seed)
    try:
        me = Client(account=probe, base_url=base).me()
    except APIError as exc:
        if exc.status in (401, 403, 404):
            raise WrapperError(f"no Chutes account uses hotkey {ss58} (the API answered HTTP {exc.status}); nothing changed",
                               "register it with ./setup.sh --register, or pick the hotkey your account was made with") from None
        raise
    username, user_id = str(me.get("username") or ""), str(me.get("user_id") or "")
    if not username or not user_id:
        raise WrapperError("the API's answer for this hotkey has no username/user_id; nothing changed")
    for section in ("api", "auth", "payment"):
        if not parser.has_section(section):
            parser.add_section(section)
    parser.set("api", "base_url", base)
    for key, value in (("username", username), ("user_id", user_id), ("hotkey_seed", seed),
                       ("hotkey_name", name), ("hotkey_ss58address", ss58)):
        parser.set("auth", key, value)
    if me.get("payment_address"):
        parser.set("payment", "address", str(me["payment_address"]))
    text = io.StringIO()
    parser.write(text)
    saved = write_private(path, text.getvalue())
    print(f"linked Chutes account {username} (user id {user_id}) with hotkey {ss58}")
    print(f"wrote {path} (mode 600)" + (f"; the previous config is in {saved}" if saved else ""))
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.commands.account", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", parents=[common], help="account, hotkey, API key status and balance")
    sub.add_parser("check", parents=[common], help="exit 1 with a hint when no account is configured")
    key = sub.add_parser("set-api-key", parents=[common], help="save an API key to ~/.chutes/api_key (asked without echo)")
    key.add_argument("--no-check", action="store_true", help="save without asking the API whether it is valid")
    linker = sub.add_parser("link", parents=[common], help="write the chutes config for an existing account's hotkey")
    linker.add_argument("--hotkey-file", help="a bittensor hotkey file (JSON with secretSeed)")
    linker.add_argument("--wallets-path", default=str(Path.home() / ".bittensor" / "wallets"))
    linker.add_argument("--hotkey-name", default="default", help="name recorded for a pasted seed")
    linker.add_argument("--api-url", help="API base URL (default: CHUTES_API_URL, the config's, or the public API)")
    args = AccountCommand(**vars(parser.parse_args(argv)))
    action = {"info": info, "check": check, "set-api-key": set_api_key, "link": link}[args.command]
    prog = {"info": " --account", "set-api-key": " --set-api-key", "link": " --link-hotkey"}.get(args.command, "")
    run_cli(lambda: action(args), debug=args.debug, prog=f"{PROG}{prog}")


if __name__ == "__main__":
    main()
