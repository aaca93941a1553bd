"""MovieLens loaders on tiny archives the tests write: both ML-100K layouts agree, bad rows are
counted and the good ones kept, missing files and columns are named in the error."""

from __future__ import annotations

import zipfile

import pytest

from data.loaders.common import split_title_year
from data.loaders.movielens import load_grouplens_ml100k, load_ml100k, load_ml1m, load_recbole_ml100k
from data.records import DataFormatError
from tests.conftest import RATINGS, write_grouplens_100k, write_recbole_wheel


def test_recbole_wheel_is_read_as_a_zip(tmp_path):
    dataset = load_recbole_ml100k(write_recbole_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl"))
    assert set(dataset.items) == {"1", "2", "3", "4"}
    star_wars = dataset.items["4"]
    assert (star_wars.title, star_wars.year) == ("Star Wars", 1977)
    assert star_wars.categories == ["Action", "Adventure", "Romance", "Sci-Fi", "War"]
    assert dataset.items["3"].title == "The Usual Suspects"       # trailing article moved to the front
    assert len(dataset.interactions) == len(RATINGS)
    assert dataset.users["20"] == {"age": "53", "gender": "F", "occupation": "other"}
    assert dataset.report.total_rejected == 0
    assert dataset.category_label == "Genres"


def test_grouplens_zip_gives_the_same_dataset_as_the_wheel(tmp_path):
    wheel = load_recbole_ml100k(write_recbole_wheel(tmp_path / "w.whl"))
    grouplens = load_grouplens_ml100k(write_grouplens_100k(tmp_path / "ml-100k.zip"))
    for item_id, item in wheel.items.items():
        other = grouplens.items[item_id]
        assert (other.title, other.year, other.categories) == (item.title, item.year, item.categories)
    as_tuples = lambda d: [(r.user_id, r.item_id, r.timestamp, r.rating) for r in d.interactions]
    assert as_tuples(grouplens) == as_tuples(wheel)


def test_load_ml100k_detects_the_layout_from_path(tmp_path):
    assert load_ml100k(write_grouplens_100k(tmp_path / "a.zip"), tmp_path).source["format"] == "grouplens"
    assert load_ml100k(write_recbole_wheel(tmp_path / "b.zip"), tmp_path).source["format"] == "recbole"
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("readme.txt", "nothing here")
    with pytest.raises(DataFormatError, match="neither GroupLens"):
        load_ml100k(empty, tmp_path)


def test_malformed_rows_are_counted_and_good_rows_kept(tmp_path):
    dataset = load_recbole_ml100k(write_recbole_wheel(tmp_path / "w.whl", bad_rows=True))
    assert len(dataset.interactions) == len(RATINGS)
    rejected = dataset.report.rejected
    assert rejected["ml-100k.inter: expected 4 fields"] == 1
    assert rejected["ml-100k.inter: bad rating"] == 1
    assert rejected["ml-100k.inter: unknown item id"] == 1
    assert rejected["ml-100k.inter: bad timestamp"] == 1
    assert dataset.report.rows_read["ml-100k.inter"] == len(RATINGS) + 4
    assert dataset.report.examples["ml-100k.inter: bad rating"] == [f"line {len(RATINGS) + 3}"]


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ml-100k/ml-100k.item", "item_id:token\tmovie_title:token_seq\n1\tToy Story\n")
        archive.writestr("ml-100k/ml-100k.inter", "user_id:token\titem_id:token\trating:float\n1\t1\t5\n")
    with pytest.raises(DataFormatError, match=r"ml-100k.inter: missing column 'timestamp'"):
        load_recbole_ml100k(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataFormatError, match="no such file"):
        load_ml100k(tmp_path / "nope.zip", tmp_path)
    with pytest.raises(DataFormatError, match="--path"):
        load_ml1m(None)


def test_ml1m_zip(tmp_path):
    path = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ml-1m/movies.dat", "1::Toy Story (1995)::Animation|Children's|Comedy\n"
                                             "2::Jumanji (1995)::Adventure|Children's|Fantasy\n2::Dup (1990)::Drama\n")
        archive.writestr("ml-1m/ratings.dat", "1::1::5::978300760\n1::2::3::978302109\n1::3::4::978301968\n"
                                              "2::1::x::978300000\n")
        archive.writestr("ml-1m/users.dat", "1::F::1::10::48067\n")
    dataset = load_ml1m(path)
    assert dataset.items["2"].categories == ["Adventure", "Children's", "Fantasy"]
    assert [(r.user_id, r.item_id) for r in dataset.interactions] == [("1", "1"), ("1", "2")]
    assert dataset.report.rejected == {"movies.dat: duplicate item id": 1, "ratings.dat: unknown item id": 1,
                                       "ratings.dat: bad rating": 1}
    assert dataset.users["1"]["occupation"] == "K-12 student"


@pytest.mark.parametrize("raw, expected", [
    ("Toy Story (1995)", ("Toy Story", 1995)),
    ("Usual Suspects, The (1995)", ("The Usual Suspects", 1995)),
    ("Star Wars", ("Star Wars", None)),
    ("Lion King, The", ("The Lion King", None)),
])
def test_split_title_year(raw, expected):
    assert split_title_year(raw) == expected
