"""Hotkeys (sr25519 keypairs) from whichever library the installed SDK signs with: substrate-interface
(chutes 0.6.9) or bittensor-wallet (chutes 0.6.10 in the SDK's repository). Only what both accept is
used: a seed as a positional hex string, and a verify-only keypair from an ss58 address."""

from __future__ import annotations

from typing import Any


def _keypair_class() -> Any:
    try:
        from substrateinterface import Keypair  # ~0.4 s: imported only when a key is needed
    except ImportError:  # the SDK's next release
        from bittensor_wallet import Keypair
    return Keypair


def from_seed(seed_hex: str) -> Any:
    """The keypair of a 32-byte hex seed (with or without 0x); raises ValueError for anything else."""
    try:
        return _keypair_class().create_from_seed(seed_hex)
    except Exception as exc:  # noqa: BLE001 - each library raises its own type; never echo the seed
        raise ValueError(f"not a 32-byte hex seed ({type(exc).__name__})") from None


def verifier(ss58_address: str) -> Any:
    """A keypair that can only verify signatures of `ss58_address` (sr25519)."""
    return _keypair_class()(ss58_address=ss58_address)


def verify(ss58_address: str, message: bytes, signature: bytes) -> bool:
    return bool(verifier(ss58_address).verify(message, signature))
