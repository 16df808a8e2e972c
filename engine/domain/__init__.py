"""The pure core: money, identities, domain events and the payment state machine.

Nothing here does I/O or imports another engine package, so every rule can be enumerated and
property-tested in memory. Modules depend one way: ``errors`` ← ``money`` ← ``ids`` ←
``events`` ← ``payment``, and ``events`` ← ``credits`` (the escrow's credits, which belong
to an account rather than a payment).
"""
