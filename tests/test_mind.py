from pathlib import Path

import pytest

from drn.mind import (Impression, MindFormatError, NewsItem, UNKNOWN, format_time, load_dataset, parse_time,
                      read_behaviors, read_news, write_behaviors, write_news)


def test_sample_loads_with_the_right_counts(mind):
    assert len(mind.impressions) == 4032
    assert len(mind.news) == 2000
    times = [imp.time for imp in mind.impressions]
    assert times == sorted(times)
    assert all(imp.labels is not None and sum(imp.labels) >= 1 for imp in mind.impressions)
    sizes = [len(imp.candidates) for imp in mind.impressions]
    assert 30 < sum(sizes) / len(sizes) < 45


def test_sample_items_carry_metadata_and_unknown_ids_do_not_crash(mind):
    known = mind.news["N34700"]
    assert (known.category, known.subcategory) == ("news", "newspolitics")
    assert known.entities == ("Q165972", "Q664609")
    assert known.provider == "assets.msn.com"
    unknown = mind.item("N-not-in-news-tsv")
    assert unknown.category == UNKNOWN and not unknown.known


def test_time_round_trips():
    assert format_time(parse_time("11/12/2019 2:14:46 PM")) == "11/12/2019 2:14:46 PM"
    assert parse_time("11/12/2019 12:00:00 AM") < parse_time("11/12/2019 12:00:00 PM")


def test_write_then_read_round_trips(tmp_path: Path):
    imps = [Impression("1", "U1", parse_time("11/9/2019 6:42:51 PM"), ("N1", "N2"), ("N3", "N4"), (0, 1)),
            Impression("2", "U2", parse_time("11/9/2019 6:00:00 AM"), (), ("N3",), (1,))]
    news = [NewsItem("N3", "sports", "golf", "A \"quoted\"\ttitle", "p1.example", ("Q1", "Q2"))]
    write_behaviors(tmp_path / "behaviors.tsv", imps)
    write_news(tmp_path / "news.tsv", news)
    data = load_dataset(tmp_path)
    assert [imp.impression_id for imp in data.impressions] == ["2", "1"]  # time order
    assert data.impressions[1] == imps[0]
    item = data.news["N3"]
    assert (item.category, item.provider, item.entities, item.title) == ("sports", "p1.example", ("Q1", "Q2"), 'A "quoted" title')


@pytest.mark.parametrize("line, reason", [
    ("1\tU1\t11/9/2019 6:42:51 PM\tN1", "expected 5 tab-separated columns"),
    ("1\tU1\tyesterday\tN1\tN2-1", "bad time"),
    ("1\tU1\t11/9/2019 6:42:51 PM\tN1\tN2-7", "bad candidate"),
    ("1\tU1\t11/9/2019 6:42:51 PM\tN1\t", "no candidates"),
])
def test_malformed_behaviors_line_names_file_and_line(tmp_path: Path, line: str, reason: str):
    path = tmp_path / "behaviors.tsv"
    path.write_text("1\tU1\t11/9/2019 6:42:51 PM\t\tN2-1\n" + line + "\n")
    with pytest.raises(MindFormatError, match=reason) as err:
        read_behaviors(path)
    assert err.value.line_no == 2 and str(path) in str(err.value)


def test_malformed_news_entities_name_the_line(tmp_path: Path):
    path = tmp_path / "news.tsv"
    path.write_text("N1\tnews\tworld\tT\tA\turl\t[{bad json\t[]\n")
    with pytest.raises(MindFormatError, match=r"news.tsv:1: entities are not JSON"):
        read_news(path)
