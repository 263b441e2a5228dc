"""Programs that run on the CVM, not in the controller: the controller sends them over SSH.

They use Python's standard library only (a CVM image has ``python3``, not duet) and import
nothing of duet's; ``docs/attestation.md`` shows what a CVM image needs for them.
"""
