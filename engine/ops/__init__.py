"""Operations: watching the engine from outside its hot path, and putting drift right.

``reconcile`` compares the PSP's, the ledger's and the chain's view of every payment and of the
escrow's balance, flags a payment that disagrees, and can re-sync its books from the chain's
logs. Ops reads and repairs through ``engine.store`` and ``engine.chain``; nothing below
imports it.
"""
