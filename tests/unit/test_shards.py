"""Rendezvous routing: one owner per stream, stable, and minimal movement when shards change."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamconv.errors import ConfigError
from streamconv.wire.shards import owner, parse_shards, weight

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
