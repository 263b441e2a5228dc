"""Evidence from others (an enclave, a CVM, an attestation service), judged offline.

One subpackage per kind of evidence (``sgx/`` today; ``snp/``, ``tdx/`` and ``azure/`` beside
it), each split the same way, because each part changes for a different reason:

* ``abi`` — bytes ↔ named fields, as tables of offsets and sizes named as in the vendor's spec;
  parsing and packing; trusts nothing and checks no signature;
* ``verify`` — signatures and certificate chains up to pinned roots (``roots``); says nothing
  about *which* workload is acceptable;
* ``policy`` — what is acceptable (measurements, minimum versions, debug), reading claims through
  a protocol so that the same policy judges a quote and an attestation service's token about it;
* ``evidence`` — the one pipeline (signatures, report-data binding, policy) that every front end
  calls, so that they report the same steps in the same order.

Services that judge evidence for us (:mod:`~duet.attestation.maa`) sit beside the kinds: their
answers are themselves evidence, verified here and judged by the kind's policy. The pinned root
certificates are files in ``roots/``. This package depends on nothing of duet's but
``errors`` and ``keys``.
"""
