"""`settle bench core` on a tiny run: the figures' shape, and every payment fully settled."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from engine.chain.backends import EmbeddedBackend
from engine.store.projections import count_by_status
from engine.store.schema import ledger_entries
from engine.tools.bench_core import CoreFigures, Load, settle_payments, to_report
from engine.tools.localnet import local_engine

PAYMENTS = 20


def test_a_small_run_settles_every_payment_and_reports_rate_and_lag(tmp_path: Path) -> None:
    progress: list[int] = []
    with EmbeddedBackend() as backend:
        engine = local_engine(f"sqlite:///{tmp_path / 'bench.db'}", backend)
        try:
            figures = settle_payments(engine, Load(PAYMENTS, settled=progress.append))
            with engine.db.snapshot() as conn:
                by_status = count_by_status(conn)
                c = ledger_entries.c
                rows = conn.execute(
                    select(c.kind, func.count()).where(c.state == "posted").group_by(c.kind)
                )
                posted = {str(kind): int(count) for kind, count in rows}
        finally:
            engine.close()

    assert by_status == {"succeeded": PAYMENTS}
    assert posted == {"authorized": PAYMENTS, "captured": PAYMENTS}
    assert len(figures.lags_s) == PAYMENTS
    assert sum(progress) == PAYMENTS and all(count > 0 for count in progress)
    report = to_report({"embedded+sqlite": figures})
    assert set(report["backends"]["embedded+sqlite"]) == {"payments_per_s", "posting_lag_p99_s"}
    assert all(value > 0 for value in report["backends"]["embedded+sqlite"].values())


def test_the_lag_percentile_is_the_worst_of_a_hundred_and_one_below_it() -> None:
    lags = tuple(float(i) for i in range(1, 101))

    assert CoreFigures(100, 1.0, lags).posting_lag_p99_s == 99.0
    assert CoreFigures(1, 1.0, (0.5,)).posting_lag_p99_s == 0.5
