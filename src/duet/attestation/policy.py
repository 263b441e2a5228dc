"""The former home of the SGX enclave policy, kept only so that existing imports keep working.

Everything here is :mod:`duet.attestation.sgx.policy`; import from there.
"""

from duet.attestation.sgx.policy import DEFAULT_POLICY, EnclaveClaims, Policy, PolicyCheck, PolicyError

__all__ = ["DEFAULT_POLICY", "EnclaveClaims", "Policy", "PolicyCheck", "PolicyError"]
