import datetime
import re

import pytest

from keras_transformer import data

FRIDAY = datetime.date(2021, 3, 5)

# An independent reader per format: strptime in the C locale after removing
# ordinal suffixes and the "the"/"of" filler words.
STRPTIME_PATTERNS = {
    "March 5, 2021": "%B %d, %Y",
    "5 March 2021": "%d %B %Y",
    "Mar 5 2021": "%b %d %Y",
    "5 mar. 2021": "%d %b. %Y",
    "Friday, March 5, 2021": "%A, %B %d, %Y",
    "Fri 5 Mar 2021": "%a %d %b %Y",
    "2021/03/05": "%Y/%m/%d",
    "20210305": "%Y%m%d",
    "2021.3.5": "%Y.%m.%d",
    "the 5th of March, 2021": "%d %B, %Y",
    "March the 5th, 2021": "%B %d, %Y",
    "MARCH 05 2021": "%B %d %Y",
    "5-Mar-2021": "%d-%b-%Y",
    "05 MAR 2021": "%d %b %Y",
    "march 5th 2021": "%B %d %Y",
    "2021, March 5": "%Y, %B %d",
}


def parse(text, date_format):
    text = re.sub(r"\b(\d+)(st|nd|rd|th)\b", r"\1", text)
    text = re.sub(r"\b(the|of) ", "", text)
    return datetime.datetime.strptime(text, STRPTIME_PATTERNS[date_format]).date()


def test_there_are_at_least_twelve_formats_and_each_is_named_by_its_example():
    assert len(data.DATE_FORMATS) >= 12
    assert set(STRPTIME_PATTERNS) == set(data.DATE_FORMATS)
    for name in data.DATE_FORMATS:
        assert data.format_date(FRIDAY, name) == name


@pytest.mark.parametrize("date_format", sorted(data.DATE_FORMATS))
def test_every_format_parses_back_to_the_generating_date(date_format):
    dates = [
        datetime.date(1900, 1, 1),
        datetime.date(1999, 12, 31),
        datetime.date(2000, 2, 29),
        datetime.date(2011, 11, 11),
        datetime.date(2022, 8, 22),
        datetime.date(2099, 12, 23),
    ]
    for date in dates:
        assert parse(data.format_date(date, date_format), date_format) == date


def test_weekday_formats_name_the_true_weekday():
    date = datetime.date(1969, 7, 20)  # A Sunday.
    assert data.format_date(date, "Friday, March 5, 2021").startswith("Sunday")
    assert data.format_date(date, "Fri 5 Mar 2021").startswith("Sun")


def test_targets_are_iso_dates_of_the_sources():
    for source, target in data.generate_date_pairs(300, seed=3):
        date = datetime.date.fromisoformat(target)
        assert target == date.isoformat()
        assert datetime.date(1900, 1, 1) <= date <= datetime.date(2099, 12, 31)
        assert source in {data.format_date(date, f) for f in data.DATE_FORMATS}


def test_no_source_spelling_maps_to_two_dates():
    targets_by_source = {}
    for source, target in data.generate_date_pairs(20000, seed=1):
        assert targets_by_source.setdefault(source, target) == target


def test_generation_is_deterministic_by_seed():
    assert data.generate_date_pairs(50, seed=4) == data.generate_date_pairs(50, seed=4)
    assert data.generate_date_pairs(50, seed=4) != data.generate_date_pairs(50, seed=5)
    assert data.date_task_splits(100, 20, seed=2) == data.date_task_splits(
        100, 20, seed=2
    )


def test_splits_never_share_a_date():
    train, test = data.date_task_splits(num_train=5000, num_test=500, seed=0)
    assert (len(train), len(test)) == (5000, 500)
    train_dates = {target for _, target in train}
    test_dates = [target for _, target in test]
    assert len(set(test_dates)) == 500
    assert train_dates.isdisjoint(test_dates)


def test_sources_vary_in_length_and_format():
    pairs = data.generate_date_pairs(2000, seed=0)
    lengths = {len(source) for source, _ in pairs}
    assert min(lengths) == 8 and max(lengths) >= 25 and len(lengths) >= 15
    used = {
        name
        for source, target in pairs
        for name in data.DATE_FORMATS
        if data.format_date(datetime.date.fromisoformat(target), name) == source
    }
    assert used == set(data.DATE_FORMATS)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: data.generate_date_pairs(0), "num_examples"),
        (lambda: data.generate_date_pairs(5, seed=-1), "seed"),
        (lambda: data.date_task_splits(num_train=0), "num_train"),
        (lambda: data.date_task_splits(num_test=73049), "num_test"),
        (lambda: data.format_date(FRIDAY, "%Y"), "date_format"),
    ],
)
def test_bad_arguments_raise_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
