"""The former home of the SGX DCAP code, kept only so that existing imports keep working.

Everything here is :mod:`duet.attestation.sgx`; import from there.
"""

from duet.attestation.sgx import *  # noqa: F403
from duet.attestation.sgx import __all__ as __all__
