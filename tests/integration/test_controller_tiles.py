"""A real controller publishing its ledger as C2SP tiles (``serve --publish-tiles DIR``), with a
witness cosigning its checkpoints: the bucket alone then proves what the controller's head says,
cosignature included. (The publisher itself, against Azurite and S3: test_tiles_publish.py.)"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.fakes.fake_witness import FakeWitness

from duet.client.sdk import DuetClient
from duet.client.tiles_source import open_tiles_source
from duet.client.trust import TrustStore
from duet.ledger.checkpoint import controller_origin, verify_cosigned_checkpoint
from duet.ledger.merkle import verify_consistency
from duet.ledger.note import NoteVerifier
from duet.ledger.tiles import verify_tiled_log
from duet.testing.process import ControllerProcess
from support import Owner, serving, start_cvm


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.1)


def test_the_controller_publishes_cosigned_tiles_that_prove_its_head(tmp_path: Path, owner: Owner) -> None:
    bucket = tmp_path / "bucket"
    witness = FakeWitness("witness.example/w1").start()
    process = ControllerProcess(
        tmp_path / "state", [owner.pub_path], extra_args=("--publish-tiles", str(bucket), "--witness", witness.option)
    )
    try:
        with (
            serving(process),
            DuetClient(process.url, owner_key=owner.key, trust=TrustStore(tmp_path / "user"), insecure=True) as client,
        ):
            pin = client.pin()
            log = NoteVerifier(controller_origin(pin.controller), pin.public_key())
            witness.trust(log)
            cvm_id = start_cvm(client)
            client.run(cvm_id, [f"echo {i}" for i in range(30)])
            head = client.head()
            size = head["tree_size"]
            with open_tiles_source(str(bucket)) as source:

                def cosigned_at_size() -> bool:
                    try:
                        note = source.checkpoint_note()
                        checked = verify_cosigned_checkpoint(note, log, [witness.signer.verifier()], quorum=1)
                    except Exception:
                        return False
                    return checked.checkpoint.size >= size

                wait_for(cosigned_at_size)  # the tiles, then the checkpoint with the witness's cosignature
                checkpoint = source.read_checkpoint(log)
                assert verify_tiled_log(source, checkpoint) == checkpoint.size
                answer = client.get("/v1/ledger/proof/consistency", first=size, second=checkpoint.size)
                proof = [bytes.fromhex(h) for h in answer["proof"]]
                # the bucket's tree extends the head the controller signed
                assert verify_consistency(size, checkpoint.size, bytes.fromhex(head["root_hash"]), checkpoint.root, proof)
    finally:
        witness.stop()
