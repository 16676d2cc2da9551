"""A small client for the Chutes API endpoints deploy.sh needs that the `chutes` CLI lacks (pickers,
account, warmup, instance logs), signing requests exactly as the SDK does (chutes.util.auth).

Secrets stay out of argv and output: the hotkey seed is read from the chutes config, the API key from
`CHUTES_API_KEY` or `~/.chutes/api_key` (mode 600). Neither is ever printed or logged.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import stat
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from tools.runtime.constants import API_KEY_ENV, API_URL_ENV
from tools.runtime.errors import APIError, WrapperError

DEFAULT_API_URL = "https://api.chutes.ai"
# The SDK's header names (chutes.constants); repeated here so reading them costs no chutes import.
USER_ID_HEADER = "X-Chutes-UserID"
HOTKEY_HEADER = "X-Chutes-Hotkey"
NONCE_HEADER = "X-Chutes-Nonce"
SIGNATURE_HEADER = "X-Chutes-Signature"
NO_ACCOUNT_HINT = "run ./setup.sh --register for a new account, or ./setup.sh --link-hotkey to use an existing one"


# --------------------------------------------------------------------------------------------------
# Where things are


def chutes_dir() -> Path:
    return Path.home() / ".chutes"


def config_path() -> Path:
    """The config the `chutes` CLI reads: CHUTES_CONFIG_PATH, else ~/.chutes/config.ini."""
    return Path(os.environ.get("CHUTES_CONFIG_PATH") or chutes_dir() / "config.ini")


def api_key_path() -> Path:
    return chutes_dir() / "api_key"


def read_config(path: Path | None = None) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    path = path or config_path()
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise WrapperError(f"{path} is not a valid config file: {exc}", "fix it, or restore a backup beside it") from None
    return parser


def api_base_url(parser: configparser.ConfigParser | None = None) -> str:
    """CHUTES_API_URL, else the config's [api] base_url, else the public API.

    The variable wins, as `account link` already has it: one set for a run (a staging API, a test
    double) must not be overridden without a word by a URL saved in the config long ago.
    """
    url = os.environ.get(API_URL_ENV, "").strip()
    if not url:
        parser = parser if parser is not None else read_config()
        url = parser.get("api", "base_url", fallback="").strip()
    return (url or DEFAULT_API_URL).rstrip("/")


@contextmanager
def cli_env(env: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """`env` for a run of the `chutes` CLI that talks to the API api_base_url() names.

    The SDK prefers a saved [api] base_url to CHUTES_API_URL (chutes.config). When both are set and
    differ, the CLI reads a private copy of the config carrying the variable's URL: mode 600 in a
    mode-700 directory, removed when the run ends.
    """
    env = dict(env)
    url = env.get(API_URL_ENV, "").strip().rstrip("/")
    path = Path(env.get("CHUTES_CONFIG_PATH") or chutes_dir() / "config.ini")
    if not url or not path.is_file():
        yield env
        return
    parser = read_config(path)
    if parser.get("api", "base_url", fallback="").strip().rstrip("/") in ("", url):
        yield env
        return
    parser.set("api", "base_url", url)
    with tempfile.TemporaryDirectory(prefix="chutes-wrappers-config-") as directory:
        copy = Path(directory) / "config.ini"
        with os.fdopen(os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as out:
            parser.write(out)
        env["CHUTES_CONFIG_PATH"] = str(copy)
        yield env


@dataclass(frozen=True)
class Account:
    """The [auth] section of the chutes config. `repr` leaves the seed out."""

    username: str
    user_id: str
    hotkey_ss58: str
    hotkey_name: str
    payment_address: str
    _seed: str

    def __repr__(self) -> str:
        return f"Account(username={self.username!r}, hotkey={self.hotkey_ss58!r})"


def load_account(required: bool = True) -> Account | None:
    """The account in the chutes config; None (or a WrapperError when required) if there is none."""
    path = config_path()
    if not path.is_file():
        if required:
            raise WrapperError(f"no Chutes account configured ({path} does not exist)", NO_ACCOUNT_HINT)
        return None
    parser = read_config(path)
    seed = parser.get("auth", "hotkey_seed", fallback="").strip().removeprefix("0x")
    ss58 = parser.get("auth", "hotkey_ss58address", fallback="").strip()
    if not seed or not ss58:
        if required:
            raise WrapperError(f"{path} has no hotkey ([auth] hotkey_seed and hotkey_ss58address)", NO_ACCOUNT_HINT)
        return None
    return Account(
        username=parser.get("auth", "username", fallback="").strip(),
        user_id=parser.get("auth", "user_id", fallback="").strip(),
        hotkey_ss58=ss58,
        hotkey_name=parser.get("auth", "hotkey_name", fallback="").strip(),
        payment_address=parser.get("payment", "address", fallback="").strip(),
        _seed=seed,
    )


def load_api_key() -> tuple[str, str] | None:
    """(key, where it came from) from CHUTES_API_KEY or ~/.chutes/api_key, else None.

    A key file that others can read is refused, as ssh refuses such a private key.
    """
    value = os.environ.get(API_KEY_ENV, "").strip()
    if value:
        return value, f"${API_KEY_ENV}"
    path = api_key_path()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise WrapperError(f"cannot read {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise WrapperError(f"{path} is readable by other users (mode {stat.S_IMODE(mode):o})", f"run: chmod 600 {path}")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    key = lines[0].strip() if lines else ""
    return (key, str(path)) if key else None


# --------------------------------------------------------------------------------------------------
# Signing, as chutes.util.auth.sign_request does it


def signing_message(hotkey: str, nonce: str, payload: bytes | None = None, purpose: str | None = None) -> str:
    if payload:
        return f"{hotkey}:{nonce}:{hashlib.sha256(payload).hexdigest()}"
    if purpose:
        return f"{hotkey}:{nonce}:{purpose}"
    raise ValueError("a payload or a purpose is needed to sign a request")


def signed_headers(account: Account, payload: bytes | None = None, purpose: str | None = None) -> dict[str, str]:
    from tools.runtime.sdk import keys  # ~0.4 s: only when a request is signed

    nonce = str(int(time.time()))
    headers = {HOTKEY_HEADER: account.hotkey_ss58, NONCE_HEADER: nonce}
    if account.user_id:
        headers[USER_ID_HEADER] = account.user_id
    message = signing_message(account.hotkey_ss58, nonce, payload, purpose)
    try:
        keypair = keys.from_seed(account._seed)
    except ValueError:  # a malformed seed: say so without echoing it
        raise WrapperError(f"the hotkey_seed in {config_path()} is not a 32-byte hex seed", NO_ACCOUNT_HINT) from None
    headers[SIGNATURE_HEADER] = keypair.sign(message.encode()).hex()
    return headers


# --------------------------------------------------------------------------------------------------
# The client


class Client:
    """Signed (hotkey) or API-key requests to the Chutes API, with one-line errors."""

    def __init__(self, account: Account | None = None, api_key: str | None = None, base_url: str | None = None,
                 timeout: float = 30.0):
        import requests

        if account is None and api_key is None:
            raise WrapperError("no Chutes credentials: no account in the chutes config and no API key", NO_ACCOUNT_HINT)
        self.account = account
        self.api_key = api_key
        self.base_url = (base_url or api_base_url()).rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = self.base_url.startswith("https://")  # no proxy for a local API

    def _headers(self, purpose: str, payload: bytes | None, use_api_key: bool) -> dict[str, str]:
        if (use_api_key or self.account is None) and self.api_key:
            return {"Authorization": f"Bearer {self.api_key}"}
        assert self.account is not None
        return signed_headers(self.account, payload=payload, purpose=None if payload else purpose)

    def request(self, method: str, path: str, purpose: str, params: dict | None = None, body: Any = None,
                stream: bool = False, use_api_key: bool = False, timeout: float | None = None):
        import requests

        payload = json.dumps(body).encode() if body is not None else None
        headers = self._headers(purpose, payload, use_api_key)
        if payload is not None:
            headers["Content-Type"] = "application/json"
        url = self.base_url + path
        try:
            answer = self.session.request(method, url, params=params, data=payload, headers=headers, stream=stream,
                                          timeout=timeout or self.timeout)
        except requests.RequestException as exc:
            raise APIError(f"cannot reach the Chutes API at {self.base_url}: {type(exc).__name__}",
                           "check your network, or CHUTES_API_URL") from None
        if answer.status_code >= 400:
            detail = _detail(answer.text if not stream else answer.raw.read(4096).decode("utf-8", "replace"))
            answer.close()
            hint = NO_ACCOUNT_HINT if answer.status_code == 401 else None
            raise APIError(f"{method} {path}: HTTP {answer.status_code}: {detail}", hint, answer.status_code)
        return answer

    def get_json(self, path: str, purpose: str, params: dict | None = None) -> Any:
        answer = self.request("GET", path, purpose, params=params)
        try:
            return answer.json()
        except ValueError:
            raise APIError(f"GET {path}: the answer is not JSON") from None

    # The endpoints

    def me(self) -> dict:
        return self.get_json("/users/me", "me")

    def list_objects(self, kind: str, page: int = 0, limit: int = 25) -> tuple[int, list[dict]]:
        data = self.get_json(f"/{kind}/", kind, params={"limit": str(limit), "page": str(page),
                                                        "include_public": "False"})
        items = data.get("items") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise APIError(f"GET /{kind}/: unexpected answer (no 'items' list)")
        total = data.get("total")
        return (int(total) if isinstance(total, int) else len(items)), [i for i in items if isinstance(i, dict)]

    def get_object(self, kind: str, name_or_id: str) -> dict:
        try:
            data = self.get_json(f"/{kind}/{_segment(name_or_id)}", kind)
        except APIError as exc:
            if exc.status == 404:
                raise APIError(f"no {kind[:-1]} named or with id {name_or_id!r} in your account",
                               f"list them with ./deploy.sh --list-{kind}", 404) from None
            raise
        if not isinstance(data, dict):
            raise APIError(f"GET /{kind}/{name_or_id}: unexpected answer")
        return data

    def warmup(self, name_or_id: str) -> dict:
        data = self.get_json(f"/chutes/warmup/{_segment(name_or_id)}", "chutes", params={"quick": "true"})
        return data if isinstance(data, dict) else {}

    def instance_logs(self, instance_id: str, backfill: int = 100) -> Iterator[str]:
        """Log lines of one instance, as they come (server-sent events with a JSON `log`)."""
        answer = self.request("GET", f"/instances/{_segment(instance_id)}/logs", "logs",
                              params={"backfill": str(backfill)}, stream=True, use_api_key=True, timeout=3600)
        with answer:
            for raw in answer.iter_lines(chunk_size=1):
                line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
                if not line.startswith("data:"):
                    continue
                text = line[5:].strip()
                if not text:
                    continue
                try:
                    data = json.loads(text)
                except json.JSONDecodeError:
                    yield text
                    continue
                message = data.get("log") if isinstance(data, dict) else None
                if isinstance(message, str) and len(message.strip()) > 1:  # single chars are keep-alives
                    yield message.rstrip()


def _segment(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def _detail(text: str) -> str:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return " ".join(text.split())[:300] or "(empty answer)"
    if isinstance(data, dict) and "detail" in data:
        detail = data["detail"]
        return detail if isinstance(detail, str) else json.dumps(detail)[:300]
    return json.dumps(data)[:300]


def client(need_account: bool = True, prefer_api_key: bool = False) -> Client:
    """A client from the local configuration: the hotkey account, and the API key when there is one."""
    account = load_account(required=need_account and not prefer_api_key)
    key = load_api_key()
    if account is None and key is None:
        raise WrapperError("no Chutes credentials: no account in the chutes config and no API key",
                           NO_ACCOUNT_HINT + ", or ./deploy.sh --set-api-key")
    return Client(account=account, api_key=key[0] if key else None)
