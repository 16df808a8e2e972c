"""Wei shown as exact decimal ether or gwei for people reading a deployment's cost; no floats,
so what is shown is what is meant."""

from __future__ import annotations

from typing import Final

ETH_DECIMALS: Final = 18
GWEI_DECIMALS: Final = 9


def format_eth(wei: int) -> str:
    """Exact decimal ether, no floats: 1234500000000000 -> '0.0012345 ETH'."""
    return _decimal(wei, ETH_DECIMALS) + " ETH"


def format_gwei(wei: int) -> str:
    return _decimal(wei, GWEI_DECIMALS) + " gwei"


def _decimal(units: int, decimals: int) -> str:
    whole, fraction = divmod(units, 10**decimals)
    digits = f"{fraction:0{decimals}d}".rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)
