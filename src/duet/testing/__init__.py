"""Fakes and harnesses for testing duet and programs built on it (as go-sev-guest's ``testing/``).

Part of the distribution on purpose: whoever extends duet (a provider, a client) tests against
the same fakes the project uses. Nothing here is used by a running controller.
"""
