"""``headcount serve``'s ingest limits and shard: from flags to settings, and bad values
refused."""

from __future__ import annotations

import pytest

from headcount.cli import build_parser, main
from headcount.cli.serve import ingest_settings
from headcount.domain.shards import ONE_SHARD, Shard
from headcount.ingest import ratelimit
from headcount.service import shard_client_id


def test_the_limits_default_to_the_rate_limiters_defaults() -> None:
    settings = ingest_settings(build_parser().parse_args(["serve"]))
    assert settings.dpu_rate == ratelimit.DEFAULT_DPU_RATE
    assert settings.dpu_burst == ratelimit.DEFAULT_DPU_BURST
    assert settings.quarantine_keep == ratelimit.DEFAULT_QUARANTINE_KEEP


def test_the_flags_set_the_limits_and_a_rate_of_0_turns_the_limit_off() -> None:
    args = build_parser().parse_args(
        ["serve", "--dpu-rate", "0", "--dpu-burst", "5", "--quarantine-keep", "0"]
    )
    settings = ingest_settings(args)
    assert settings.rate_limit is None
    assert settings.dpu_burst == 5
    assert settings.quarantine_keep == 0
    limited = ingest_settings(build_parser().parse_args(["serve", "--dpu-rate", "7"]))
    assert limited.rate_limit == ratelimit.RateLimit(7, ratelimit.DEFAULT_DPU_BURST)


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [("--dpu-rate", "-1", "cannot be negative"), ("--dpu-burst", "0", "at least 1")],
    ids=["negative-rate", "no-burst"],
)
def test_a_bad_limit_is_refused_naming_what_is_wrong(
    flag: str, value: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", flag, value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert flag in err
    assert says in err


def test_the_shard_flag_and_its_client_id() -> None:
    assert build_parser().parse_args(["serve"]).shard == ONE_SHARD
    assert build_parser().parse_args(["serve", "--shard", "2/3"]).shard == Shard(2, 3)
    assert shard_client_id(ONE_SHARD) == "headcount"  # one shard is the unsharded service
    assert shard_client_id(Shard(2, 3)) == "headcount-shard-2"


def test_a_shard_needs_an_external_broker(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--shard", "1/2", "--store", "sqlite+aiosqlite://"])
    assert code == 2
    assert capsys.readouterr().err == (
        "headcount serve: --shard 1/2 needs --broker URL: the shards share one external broker"
        " (or cluster), which an embedded broker, one per process, cannot be\n"
    )
