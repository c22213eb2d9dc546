"""Group 8, the pieces both backends take from the same shared code by design: the recipe
parity (test_8_recipes.py) feeds both the same genre table, release table, user histories, logQ
probabilities, mixed-negative draws and batch order, so it cannot see a wrong piece. Each is
tested once here against an independent reference written from its definition (the raw
files, Python sets and sorts), on the parity dataset (real ml-100k when TWOSTAGE_DATA_DIR
names it).

The batch order is the other shared piece: ``twostage.schedule.BatchPlan`` is checked against
``data.split.epoch_batches`` in torch_impl/tests/test_train.py, and the TFRS fit is shown to
consume exactly those batches in tfrs_impl/tests/test_train.py
(test_fit_equals_manual_train_steps_on_shared_batches).
"""
from collections import Counter, defaultdict

import numpy as np

from twostage.recipes import (HISTORY_LENGTH, HistoryIndex, epoch_negatives, genre_table,
                              negative_sampling_probability)
from twostage.sampling import candidate_sampling_probability

# TFDS's movielens/100k-movies renames two u.genre names (movielens_parsing.py)
TFDS_NAME = {"Children's": "Children", "unknown": "Unknown"}


def test_genre_table_equals_the_raw_u_item_flags(dataset):
    """Each title's genres read straight from u.item's 19 flag columns and u.genre's names."""
    from twostage.data.registry import TFDS_GENRES
    folder = dataset.movielens.source
    names = {}
    for line in (folder / "u.genre").read_text(encoding="latin-1").splitlines():
        if line.strip():
            name, index = line.split("|")
            names[int(index)] = TFDS_NAME.get(name, name)
    expected = defaultdict(set)
    for line in (folder / "u.item").read_text(encoding="latin-1").splitlines():
        if line.strip():
            fields = line.strip().split("|")
            flags = fields[5:5 + len(names)]
            expected[fields[1].strip()] |= {TFDS_GENRES.index(names[g]) + 1
                                            for g, flag in enumerate(flags) if flag == "1"}
    movies = dataset.movielens.movies
    table = genre_table(movies["movie_title"].to_numpy(dtype=object), movies["movie_genres"],
                        dataset.spec)
    for title, ids in expected.items():
        row = table[dataset.spec.title_index([title])[0]]
        assert row[row > 0].tolist() == sorted(ids), title


def test_release_table_equals_the_raw_u_item_dates(dataset):
    """Each title's release bucket from u.item's third field by datetime.strptime: 0 unknown,
    1 before 1990, then 2 + the quarters since 1990 (the earliest entry of a title), the year
    in the title where no entry of the title has a date."""
    import datetime
    import re
    from twostage.recipes import NUM_RELEASE_BUCKETS, release_dates, release_table
    given, guessed = {}, {}
    for line in (dataset.movielens.source / "u.item").read_text(
            encoding="latin-1").splitlines():
        if line.strip():
            fields = line.strip().split("|")
            title, year = fields[1].strip(), re.search(r"\((\d{4})\)\s*$", fields[1])
            if fields[2]:
                date = datetime.datetime.strptime(fields[2], "%d-%b-%Y")
                given[title] = min(date, given.get(title, date))
            elif year:
                guessed[title] = datetime.datetime(int(year.group(1)), 1, 1)
    earliest = {**guessed, **given}  # a title's given date wins over its title's year
    movies = dataset.movielens.movies
    table = release_table(movies["movie_title"].to_numpy(dtype=object), release_dates(movies),
                          dataset.spec)
    for title in set(movies["movie_title"]):
        date = earliest.get(title)
        quarters = None if date is None else (date.year - 1990) * 4 + (date.month - 1) // 3
        want = (0 if date is None else 1 if quarters < 0 else
                min(quarters + 2, NUM_RELEASE_BUCKETS - 1))
        assert table[dataset.spec.title_index([title])[0]] == want, title
    assert table[0] == 0 and len(set(table.tolist())) > 10  # the OOV row; dates that differ


def test_sampling_probability_is_the_training_frequency_of_the_title(dataset):
    """p of a row = how often its title occurs among the training rows / their number."""
    train_titles = Counter(dataset.movie_title[dataset.split.train].tolist())
    n = len(dataset.split.train)
    expected = np.array([train_titles[t] / n for t in dataset.movie_title.tolist()], np.float32)
    np.testing.assert_array_equal(candidate_sampling_probability(dataset), expected)


def test_histories_are_each_users_latest_earlier_titles(dataset):
    """A query's history: the user's training ratings strictly before its time, the latest
    HISTORY_LENGTH of them, oldest first, 0-padded on the left (ratings of the same second in
    the training split's order)."""
    train = dataset.split.train
    titles = dataset.features["title_index"]
    index = HistoryIndex.from_ratings(dataset.user_id[train], dataset.timestamp[train],
                                      titles[train])
    by_user = defaultdict(list)
    for position, row in enumerate(train.tolist()):
        by_user[str(dataset.user_id[row])].append((int(dataset.timestamp[row]), position, row))
    rng = np.random.default_rng(0)
    queries = rng.choice(len(dataset.user_id), size=300, replace=False)
    users = dataset.user_id[queries]
    stamps = dataset.timestamp[queries] + rng.integers(-10**6, 10**6, 300)
    got = index.lookup(users, stamps)
    for i, (user, ts) in enumerate(zip(users.tolist(), stamps.tolist())):
        earlier = sorted(r for r in by_user[str(user)] if r[0] < ts)[-HISTORY_LENGTH:]
        want = [0] * (HISTORY_LENGTH - len(earlier)) + [int(titles[r]) for _, _, r in earlier]
        assert got[i].tolist() == want, (user, ts)


def test_mixed_negatives_are_uniform_and_their_probability_says_so(dataset):
    """The draws are uniform over the title ids 1..V (what negative_sampling_probability's
    1 / V claims): every id's count within 5 standard deviations of its expectation, and a
    step's draws differ from the next's."""
    v = len(dataset.spec.title_vocab)
    draws = epoch_negatives(v, 256, 42, 0, 400)
    assert draws.min() >= 1 and draws.max() <= v
    counts = np.bincount(draws.ravel(), minlength=v + 1)[1:]
    expected = draws.size / v
    assert np.abs(counts - expected).max() <= 5 * np.sqrt(expected)
    assert not np.array_equal(draws[0], draws[1])
    assert np.all(negative_sampling_probability(v, 3) == np.float32(1 / v))
