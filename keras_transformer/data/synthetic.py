"""A synthetic translation task: dates in many spellings -> ISO 8601.

Sources spell a date between 1900-01-01 and 2099-12-31 in one of
`DATE_FORMATS` ("March 5, 2021", "the 5th of March, 2021", "20210305", ...);
the target is always `date.isoformat()` ("2021-03-05"). Every format is
unambiguous: numeric formats put the four-digit year first and the month
before the day (year/month/day), so no "05/03" day-month confusion exists,
and weekday formats carry the true weekday. Lengths vary from 8 to 29
characters, which exercises padding and bucketing.
"""

import datetime
import random

from keras_transformer.validation import (
    check_non_negative_int,
    check_positive_int,
)

FIRST_DATE = datetime.date(1900, 1, 1)
LAST_DATE = datetime.date(2099, 12, 31)
_NUM_DAYS = (LAST_DATE - FIRST_DATE).days + 1

_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
_WEEKDAYS = (
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday",
)  # fmt: skip


def _ordinal(day):
    if day in (11, 12, 13):
        return f"{day}th"
    return f"{day}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(day % 10, 'th') }"


def _fields(date):
    month = _MONTHS[date.month - 1]
    weekday = _WEEKDAYS[date.weekday()]
    return {
        "y": date.year,
        "m": date.month,
        "d": date.day,
        "nth": _ordinal(date.day),
        "month": month,
        "month_upper": month.upper(),
        "month_lower": month.lower(),
        "mon": month[:3],
        "mon_upper": month[:3].upper(),
        "mon_lower": month[:3].lower(),
        "weekday": weekday,
        "wkd": weekday[:3],
    }


# name -> template over `_fields`; the name is the example spelling of
# Friday 2021-03-05.
DATE_FORMATS = {
    "March 5, 2021": "{month} {d}, {y}",
    "5 March 2021": "{d} {month} {y}",
    "Mar 5 2021": "{mon} {d} {y}",
    "5 mar. 2021": "{d} {mon_lower}. {y}",
    "Friday, March 5, 2021": "{weekday}, {month} {d}, {y}",
    "Fri 5 Mar 2021": "{wkd} {d} {mon} {y}",
    "2021/03/05": "{y}/{m:02d}/{d:02d}",
    "20210305": "{y}{m:02d}{d:02d}",
    "2021.3.5": "{y}.{m}.{d}",
    "the 5th of March, 2021": "the {nth} of {month}, {y}",
    "March the 5th, 2021": "{month} the {nth}, {y}",
    "MARCH 05 2021": "{month_upper} {d:02d} {y}",
    "5-Mar-2021": "{d}-{mon}-{y}",
    "05 MAR 2021": "{d:02d} {mon_upper} {y}",
    "march 5th 2021": "{month_lower} {nth} {y}",
    "2021, March 5": "{y}, {month} {d}",
}


def format_date(date, date_format):
    """Spells `date` in one of `DATE_FORMATS` (given by its name)."""
    if date_format not in DATE_FORMATS:
        raise ValueError(
            "Received an invalid value for argument date_format, expected one "
            f"of {list(DATE_FORMATS)}. Received: date_format={date_format!r}"
        )
    return DATE_FORMATS[date_format].format(**_fields(date))


def _pairs_for(dates, rng):
    formats = list(DATE_FORMATS)
    return [
        (format_date(date, rng.choice(formats)), date.isoformat()) for date in dates
    ]


def _date(day_index):
    return FIRST_DATE + datetime.timedelta(days=day_index)


def generate_date_pairs(num_examples, seed=0):
    """Draws `(source, target)` pairs: uniform dates, uniform formats.

    Args:
        num_examples: int. Number of pairs.
        seed: int. Same seed, same pairs (Python's `random.Random`).

    Returns:
        list of `(source, target)` str tuples, e.g.
        `("the 5th of March, 2021", "2021-03-05")`.
    """
    check_positive_int("num_examples", num_examples)
    check_non_negative_int("seed", seed)
    rng = random.Random(seed)
    dates = [_date(rng.randrange(_NUM_DAYS)) for _ in range(num_examples)]
    return _pairs_for(dates, rng)


def date_task_splits(num_train=20000, num_test=1000, seed=0):
    """Train and held-out pairs whose dates never overlap.

    The held-out set uses `num_test` distinct dates drawn without
    replacement; training pairs are drawn (with replacement) from all the
    other dates, so a test date never appears in training in any spelling.

    Args:
        num_train: int. Number of training pairs.
        num_test: int. Number of held-out pairs (and distinct held-out dates).
        seed: int. Same seed, same splits.

    Returns:
        `(train_pairs, test_pairs)`, lists of `(source, target)` tuples.
    """
    check_positive_int("num_train", num_train)
    check_positive_int("num_test", num_test)
    check_non_negative_int("seed", seed)
    if num_test >= _NUM_DAYS:
        raise ValueError(
            "Received an invalid value for argument num_test, expected fewer "
            f"than the {_NUM_DAYS} dates in {FIRST_DATE}..{LAST_DATE} so some "
            f"are left for training. Received: num_test={num_test}"
        )
    rng = random.Random(seed)
    day_indices = list(range(_NUM_DAYS))
    rng.shuffle(day_indices)
    test_days, train_days = day_indices[:num_test], day_indices[num_test:]
    train_dates = [_date(rng.choice(train_days)) for _ in range(num_train)]
    test_dates = [_date(day) for day in test_days]
    return _pairs_for(train_dates, rng), _pairs_for(test_dates, rng)
