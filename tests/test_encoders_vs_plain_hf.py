"""Every family's batched merc vectors equal the plain per-utterance Hugging Face loop (tools/bench_families.py)."""

import pytest

from merc.tools.bench_families import FAMILIES, bench_family


@pytest.mark.parametrize("family", list(FAMILIES))
def test_batched_merc_matches_the_plain_loop(family):
    (result,) = bench_family(family, n_utts=3)
    assert result["utterances"] == 3 and result["plain_s"] > 0 and result["merc_s"] > 0
    assert result["max_abs_diff"] < 1e-4, result
