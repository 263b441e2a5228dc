"""Publication of the ledger outside the controller: C2SP tlog-tiles in object storage.

``stores`` writes and reads objects (Azure Blob Storage, S3-compatible buckets, a local
directory for a static HTTP host); ``tiles`` is the publisher that keeps a store's tiled log
up to date with the ledger, checkpoint last. Readers (``duet.client.tiles_source``) audit the
published log without contacting the controller.
"""
