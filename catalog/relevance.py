"""The relevance score of a search hit, as SQL over a row aliased ``p``:

    text rank x rating factor x recency factor

The rating factor is 1 + up to 0.2 for a high, well-reviewed rating (the average rating,
damped while reviews are few); the recency factor is 1 + 0.2 / (1 + age in 30-day
months): its boost is 0.2 when new, 0.1 at one month, 0.05 at three, fading without
reaching zero (a future ``created_at`` counts as new, so the factor never exceeds 1.2,
and it only falls with age: bounds the very-common-word path relies on). All in float8 from
integers and times: converting the numeric ``rating_avg`` or doing numeric arithmetic on
every hit of a common word cost more than the rest of the statement.

The very-common-word rows store ``static`` = text rank x rating factor, computed by the
same expression in migrations/0017_discovery.sql, so ``static x recency`` there is the
same float as the full product here.
"""

RATING_FACTOR = "(1 + 0.04 * p.rating_sum::float8 / (p.rating_count + 10))"
RECENCY_FACTOR = ("(1 + 0.2 / (1 + greatest(date_part('epoch', now() - p.created_at), 0)"
                  " / 2592000))")


def score(rank: str) -> str:
    return f"{rank} * {RATING_FACTOR} * {RECENCY_FACTOR}"
