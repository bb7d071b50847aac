"""The retry schedule, as pure functions of (entry times, config, now).

No clock is read here: the caller passes ``now``. The shape is Postfix's:
the first attempt is immediate; after the n-th failed attempt the next one is
``min(retry_max, retry_initial * 2**(n-1))`` later (300 s, 600 s, 1200 s, ...
capped at one hour by default); after ``expire`` seconds since the entry was
created the remaining recipients bounce (RFC 5321 §4.5.4.1: "give up" should be
at least 4-5 days); one delay warning may be sent once ``delay_warning`` seconds
have passed (0 disables it).
"""

from __future__ import annotations

from mailyard.config import QueueConfig

# RFC 5321 §4.5.4.1 asks for a retry interval of at least 30 minutes in
# production; the default config waits 5 minutes first, as Postfix and Exim do.


def backoff(failures: int, config: QueueConfig) -> float:
    """Seconds to wait after the ``failures``-th failed attempt (failures >= 1)."""
    if failures <= 0:
        return 0.0
    # Cap the exponent so 2**n never becomes a huge integer (n grows with the queue age).
    exp = min(failures - 1, 62)
    return float(min(config.retry_max, config.retry_initial * (2**exp)))


def next_attempt_after(failures: int, now: float, config: QueueConfig) -> float:
    """When to try again after the ``failures``-th failed attempt that ended at ``now``."""
    return now + backoff(failures, config)


def is_expired(created: float, now: float, config: QueueConfig) -> bool:
    """Time to give up and bounce what is still pending."""
    return now - created >= config.expire


def delay_warning_due(created: float, now: float, config: QueueConfig, *,
                      already_warned: bool) -> bool:
    """A delay DSN (RFC 3464 Action: delayed) is due now, and was not sent before."""
    if config.delay_warning <= 0 or already_warned:
        return False
    if is_expired(created, now, config):
        return False  # the failure DSN supersedes the warning
    return now - created >= config.delay_warning
