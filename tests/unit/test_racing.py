"""`Racing`: how long a replica that lost claim races pauses before it claims."""

from __future__ import annotations

from worker.queues import Racing


def test_a_replica_that_has_not_lost_claims_at_once() -> None:
    racing = Racing()
    assert racing.pause_s() == 0.0
    racing.settled(won=True)
    assert racing.pause_s() == 0.0


def test_each_loss_doubles_the_pause_up_to_the_cap() -> None:
    racing = Racing()
    caps = []
    for _ in range(8):
        racing.settled(won=False)
        caps.append(max(racing.pause_s() for _ in range(50)))
    assert Racing.FIRST_S / 2 <= caps[0] <= Racing.FIRST_S
    assert caps[1] > Racing.FIRST_S
    assert Racing.CAP_S / 2 <= caps[-1] <= Racing.CAP_S


def test_a_win_ends_the_pause() -> None:
    racing = Racing()
    racing.settled(won=False)
    racing.settled(won=False)
    racing.settled(won=True)
    assert racing.pause_s() == 0.0
    racing.settled(won=False)
    assert racing.pause_s() <= Racing.FIRST_S


def test_a_loss_long_ago_is_forgotten() -> None:
    racing = Racing()
    for _ in range(6):
        racing.settled(won=False)
    racing._lost_at -= Racing.FORGET_S + 1  # the last race was lost over a second ago
    assert racing.pause_s() == 0.0
    racing.settled(won=False)
    assert racing.pause_s() <= Racing.FIRST_S
