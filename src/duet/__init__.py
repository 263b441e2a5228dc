"""duet: a trustworthy controller for confidential VMs."""

__version__ = "0.1.0"
