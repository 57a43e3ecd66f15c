"""Rendezvous routing: one owner per stream, stable, and minimal movement when shards change."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamconv.errors import ConfigError, StartupError
from streamconv.wire.shards import identity, owner, parse_shards, resolve, weight
from tests.conftest import REPO

SHARDS = [f"tcp://streamconv-worker-{i}.streamconv-worker:5555" for i in range(5)]
names = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)


@settings(max_examples=200)
@given(stream=names, data=st.data())
def test_the_owner_does_not_depend_on_the_order_of_the_list(
    stream: str, data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(SHARDS))
    assert owner(stream, shuffled) == owner(stream, SHARDS)


@settings(max_examples=200)
@given(streams=st.lists(names, min_size=1, max_size=50, unique=True), gone=st.integers(0, 4))
def test_removing_a_shard_moves_only_its_own_streams(streams: list[str], gone: int) -> None:
    left = [s for i, s in enumerate(SHARDS) if i != gone]
    for stream in streams:
        before, after = owner(stream, SHARDS), owner(stream, left)
        if before != SHARDS[gone]:
            assert after == before  # unaffected streams stay where they are
        else:
            assert after in left


@settings(max_examples=100)
@given(streams=st.lists(names, min_size=1, max_size=50, unique=True))
def test_adding_a_shard_moves_streams_only_onto_it(streams: list[str]) -> None:
    grown = [*SHARDS, "tcp://streamconv-worker-5.streamconv-worker:5555"]
    for stream in streams:
        after = owner(stream, grown)
        assert after in (owner(stream, SHARDS), grown[-1])


def test_streams_spread_evenly_and_weights_are_stable() -> None:
    counts = Counter(owner(f"cam{i}", SHARDS) for i in range(5000))
    assert set(counts) == set(SHARDS)
    assert max(counts.values()) < 1.1 * 5000 / len(SHARDS)  # within 10% of a fair share
    # The same number on every machine and every run (blake2b, not Python's salted hash).
    assert weight("cam0", "tcp://a:1") == 0xB01CF857D9134AD5


def test_parse_shards() -> None:
    assert parse_shards("tcp://a:1, tcp://b:1,,tcp://a:1") == ["tcp://a:1", "tcp://b:1"]
    assert parse_shards(["tcp://a:1,tcp://b:1", "tcp://c:1"]) == [
        "tcp://a:1",
        "tcp://b:1",
        "tcp://c:1",
    ]
    with pytest.raises(ConfigError, match="not an endpoint"):
        parse_shards("worker-0:5555")
    with pytest.raises(ConfigError, match="no shards"):
        owner("cam0", [])


def test_cli_names_what_is_missing_or_contradictory(capsys: pytest.CaptureFixture[str]) -> None:
    from streamconv.cli import main

    assert main(["proxy"]) == 2
    assert "--shards EP,EP" in capsys.readouterr().err
    assert (
        main(["proxy", "--shards", "tcp://127.0.0.1:5556", "--listen", "tcp://0.0.0.0:5560"]) == 2
    )
    assert "--allow-insecure" in capsys.readouterr().err
    both = ["capture", "sample", "--shards", "tcp://127.0.0.1:5555", "--connect", "tcp://h:1"]
    assert main(both) == 2
    assert "not both" in capsys.readouterr().err


def test_workers_sharing_a_checkpoint_folder_touch_only_their_own_streams(tmp_path: Path) -> None:
    import torch

    from streamconv.worker.checkpoints import Checkpoints, Snapshot

    shards = ["tcp://w0:5555", "tcp://w1:5555"]
    streams = [f"cam{i}" for i in range(12)]
    folders = {
        shard: Checkpoints(tmp_path, "fp", lambda s, me=shard: owner(s, shards) == me)
        for shard in shards
    }
    for s in streams:  # each written by its owner
        state = {"x": {"history": torch.zeros(1, 1, 2, 3, 3)}}
        folders[owner(s, shards)].write(Snapshot(s, "sess", 5, (1, 3, 3), state))
    stale = tmp_path / f".{streams[0]}.ckpt.7.tmp"  # a write cut short by a crash
    stale.write_bytes(b"half")
    first_owner = owner(streams[0], shards)
    for shard in sorted(shards, key=lambda s: s == first_owner):  # the non-owner first
        got = {snap.stream for snap in folders[shard].load_all(torch.device("cpu"), 3600, 64)}
        assert got == {s for s in streams if owner(s, shards) == shard}
        assert 0 < len(got) < len(streams)  # the twelve streams are split between the two
        assert stale.exists() == (shard != first_owner)  # cleaned by its stream's owner only
    assert len(list(tmp_path.glob("*.ckpt"))) == len(streams)  # nobody pruned another's
    foreign = next(s for s in streams if owner(s, shards) == shards[1])
    folders[shards[0]].remove(foreign)  # the old owner of a moved stream ends it: kept
    assert (tmp_path / f"{foreign}.ckpt").exists()
    folders[shards[1]].remove(foreign)
    assert not (tmp_path / f"{foreign}.ckpt").exists()
    # A stale temporary file is cleaned by the owner of its stream only.
    assert (tmp_path / f".{streams[0]}.ckpt.7.tmp").exists() == (
        owner(streams[0], shards) != shards[0] and owner(streams[0], shards) != shards[1]
    )


def test_a_worker_names_its_own_shard_among_the_list() -> None:
    from streamconv.config import WorkerSettings

    w = WorkerSettings(shards="tcp://w0:5555,tcp://w1:5555", shard="tcp://w1:5555")  # type: ignore[arg-type]
    assert w.shards == ["tcp://w0:5555", "tcp://w1:5555"]
    with pytest.raises(ValueError, match="not in shards"):
        WorkerSettings(shards=["tcp://w0:5555"], shard="tcp://w9:5555")
    with pytest.raises(ValueError, match="together"):
        WorkerSettings(shards=["tcp://w0:5555"])


def test_dns_names_resolve_to_every_address_named_by_reverse_lookup() -> None:
    assert resolve(["dns://localhost:5555", "tcp://w9:5555"])[-1] == "tcp://w9:5555"
    resolved = resolve(["dns://localhost:5555"])
    assert resolved
    assert all(r.startswith("tcp://") and r.endswith(":5555") for r in resolved)
    assert "tcp://localhost:5555" in resolved or "tcp://127.0.0.1:5555" in resolved
    with pytest.raises(ConfigError, match="does not resolve"):
        resolve(["dns://no-such-host.invalid:5555"])
    with pytest.raises(ConfigError, match="dns://NAME:PORT"):
        resolve(["dns://localhost"])


def test_short_and_fully_qualified_names_are_the_same_shard() -> None:
    short = [f"tcp://streamconv-worker-{i}.streamconv-worker:5555" for i in range(4)]
    fqdn = [f"tcp://streamconv-worker-{i}.streamconv-worker.cams.svc.cluster.local:5555"
            for i in range(4)]  # fmt: skip
    assert identity(short[2]) == identity(fqdn[2]) == "streamconv-worker-2.streamconv-worker:5555"
    assert identity("tcp://gpu.rack1.example:5555") != identity("tcp://gpu.rack2.example:5555")
    for i in range(300):  # a capture resolving dns:// and a worker with the short list agree
        assert short.index(owner(f"cam{i}", short)) == fqdn.index(owner(f"cam{i}", fqdn))
    assert identity("tcp://10.0.0.7:5555") == "tcp://10.0.0.7:5555"  # addresses: whole
    assert identity("tcp://localhost:5555") == "tcp://localhost:5555"  # one label: whole
    assert identity("ipc:///tmp/w0") == "ipc:///tmp/w0"


def test_a_capture_waits_for_a_dns_name_that_does_not_resolve_yet() -> None:
    from streamconv.capture.role import Capture

    capture = Capture("synthetic:8x8:2", stream="cam0", shards=["dns://no-such.invalid:5555"],
                      wait_s=0.2)  # fmt: skip
    with pytest.raises(StartupError, match="no worker answered"):
        capture.run()  # tried again until wait_s: a clear startup error, not a config error


def test_the_protocol_documents_the_routing_exactly() -> None:
    """docs/PROTOCOL.md's worked example, recomputed from its words (hashlib alone)."""
    import hashlib
    import re

    text = (REPO / "docs/PROTOCOL.md").read_text()
    shards = [f"tcp://streamconv-worker-{i}.streamconv-worker:5555" for i in range(3)]
    documented = re.findall(r"`(0x[0-9a-f]{16})`", text)
    by_hand = [
        int.from_bytes(
            hashlib.blake2b(f"{identity(s)}\ncam0".encode(), digest_size=8).digest(), "big"
        )
        for s in shards
    ]
    assert [int(d, 16) for d in documented] == by_hand == [weight("cam0", s) for s in shards]
    assert owner("cam0", shards) == shards[1]
    assert "the owner is worker 1" in text
