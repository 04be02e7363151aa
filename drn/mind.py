"""MIND format: read and write `behaviors.tsv` / `news.tsv`.

MIND (Wu et al., ACL 2020) is the format the news-recommendation field shares, so the simulated world writes it
and offline training reads it. Times are kept as UTC epoch seconds (floats) everywhere in the project.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Sequence

MIND_TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"
UNKNOWN = "unknown"  # category / subcategory / provider of a news id that news.tsv does not describe


class MindFormatError(ValueError):
    """A malformed MIND line; the message names the file and the 1-based line number."""

    def __init__(self, path: str | os.PathLike, line_no: int, reason: str):
        super().__init__(f"{path}:{line_no}: {reason}")
        self.path, self.line_no, self.reason = str(path), line_no, reason


@dataclass(frozen=True)
class NewsItem:
    """One news article: the metadata DRN's news features are built from."""

    news_id: str
    category: str = UNKNOWN
    subcategory: str = UNKNOWN
    title: str = ""
    provider: str = UNKNOWN
    entities: tuple[str, ...] = ()
    abstract: str = ""
    url: str = ""
    published: float | None = None  # epoch seconds; MIND has none (features then use the first-seen time)

    @property
    def known(self) -> bool:
        return self.category != UNKNOWN


@dataclass(frozen=True)
class Impression:
    """One request: the user saw `candidates`; `labels[i]` is 1 when candidate i was clicked (None: unlabelled)."""

    impression_id: str
    user: str
    time: float
    history: tuple[str, ...]
    candidates: tuple[str, ...]
    labels: tuple[int, ...] | None = None
    click_times: tuple[float, ...] | None = None  # aligned with `clicked`; None: clicks happened at `time` (MIND)
    returned: float | None = None  # when the user reported coming back after it (serving's logs; MIND has none)

    @property
    def clicked(self) -> tuple[str, ...]:
        if self.labels is None:
            return ()
        return tuple(c for c, y in zip(self.candidates, self.labels) if y)

    def timed_clicks(self) -> tuple[tuple[float, str], ...]:
        """(time, news id) of each click; MIND logs no click times, so those default to the impression's."""
        clicked = self.clicked
        times = self.click_times if self.click_times is not None else (self.time,) * len(clicked)
        return tuple(zip(times, clicked))


@dataclass
class Dataset:
    """A MIND folder in memory: impressions in time order and the news table."""

    impressions: list[Impression]
    news: dict[str, NewsItem] = field(default_factory=dict)

    def item(self, news_id: str) -> NewsItem:
        """The news item, or an item with no metadata for ids news.tsv does not describe (never a KeyError)."""
        return self.news.get(news_id) or NewsItem(news_id)


def parse_time(text: str) -> float:
    return datetime.strptime(text.strip(), MIND_TIME_FORMAT).replace(tzinfo=timezone.utc).timestamp()


def format_time(epoch_s: float) -> str:
    stamp = datetime.fromtimestamp(epoch_s, tz=timezone.utc)
    return f"{stamp.month}/{stamp.day}/{stamp.year} {stamp.strftime('%I:%M:%S %p').lstrip('0')}"


def provider_from_url(url: str) -> str:
    """MIND has no provider column: the url's host stands in for it (the world writes one host per provider)."""
    if "://" not in url:
        return UNKNOWN
    host = url.split("://", 1)[1].split("/", 1)[0]
    return host or UNKNOWN


def _parse_candidates(text: str, path: Path, line_no: int) -> tuple[tuple[str, ...], tuple[int, ...] | None]:
    tokens = text.split()
    if not tokens:
        raise MindFormatError(path, line_no, "impression has no candidates")
    if all("-" not in t for t in tokens):
        return tuple(tokens), None
    ids, labels = [], []
    for token in tokens:
        news_id, sep, label = token.rpartition("-")
        if not sep or not news_id or label not in ("0", "1"):
            raise MindFormatError(path, line_no, f"bad candidate {token!r} (expected NEWSID-0 or NEWSID-1)")
        ids.append(news_id)
        labels.append(int(label))
    return tuple(ids), tuple(labels)


def _tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, columns) of each non-blank line: MIND files have no header and no quoting."""
    with path.open(encoding="utf-8", newline="") as handle:
        for line_no, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield line_no, line.split("\t")


def iter_behaviors(path: str | os.PathLike) -> Iterator[Impression]:
    """Impressions in file order (use `read_behaviors` for time order)."""
    path = Path(path)
    for line_no, cols in _tsv_rows(path):
        if len(cols) != 5:
            raise MindFormatError(path, line_no, f"expected 5 tab-separated columns, found {len(cols)}")
        impression_id, user, time_text, history, candidates = cols
        if not user:
            raise MindFormatError(path, line_no, "empty user id")
        try:
            time = parse_time(time_text)
        except ValueError:
            raise MindFormatError(path, line_no, f"bad time {time_text!r} (expected like 11/12/2019 2:14:46 PM)") from None
        ids, labels = _parse_candidates(candidates, path, line_no)
        yield Impression(impression_id, user, time, tuple(history.split()), ids, labels)


def iter_time_ordered(path: str | os.PathLike) -> Iterator[Impression]:
    """Stream a behaviors.tsv that is already in time order (as the world writes it); a line that goes back in
    time is an error naming it, since streaming consumers cannot sort."""
    last = float("-inf")
    for line_no, impression in enumerate(iter_behaviors(path), start=1):
        if impression.time < last:
            raise MindFormatError(path, line_no, "impressions are not in time order (sort the file to stream it)")
        last = impression.time
        yield impression


def read_behaviors(path: str | os.PathLike) -> list[Impression]:
    """All impressions, sorted by time (stable, so equal times keep file order)."""
    return sorted(iter_behaviors(path), key=lambda imp: imp.time)


def _entity_ids(text: str, path: Path, line_no: int) -> tuple[str, ...]:
    if not text.strip():
        return ()
    try:
        entities = json.loads(text)
    except json.JSONDecodeError as err:
        raise MindFormatError(path, line_no, f"entities are not JSON ({err.msg})") from None
    return tuple(e["WikidataId"] for e in entities if isinstance(e, dict) and e.get("WikidataId"))


def read_news(path: str | os.PathLike) -> dict[str, NewsItem]:
    path = Path(path)
    news: dict[str, NewsItem] = {}
    for line_no, cols in _tsv_rows(path):
        if len(cols) < 3 or len(cols) > 8:
            raise MindFormatError(path, line_no, f"expected 8 tab-separated columns, found {len(cols)}")
        cols += [""] * (8 - len(cols))
        news_id, category, subcategory, title, abstract, url, title_ent, abstract_ent = cols
        if not news_id:
            raise MindFormatError(path, line_no, "empty news id")
        entities = dict.fromkeys(_entity_ids(title_ent, path, line_no) + _entity_ids(abstract_ent, path, line_no))
        news[news_id] = NewsItem(news_id, category or UNKNOWN, subcategory or UNKNOWN, title,
                                 provider_from_url(url), tuple(entities), abstract, url)
    return news


def load_dataset(folder: str | os.PathLike) -> Dataset:
    """A MIND folder: behaviors.tsv (required) and news.tsv (optional: every id then has no metadata)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    behaviors = folder / "behaviors.tsv"
    if not behaviors.is_file():
        raise FileNotFoundError(f"{behaviors}: missing (a MIND folder holds behaviors.tsv and news.tsv)")
    news_path = folder / "news.tsv"
    news = read_news(news_path) if news_path.is_file() else {}
    return Dataset(read_behaviors(behaviors), news)


def write_behaviors(path: str | os.PathLike, impressions: Iterable[Impression]) -> None:
    with Path(path).open("w", encoding="utf-8", newline="") as handle:
        for imp in impressions:
            if imp.labels is None:
                cands = " ".join(imp.candidates)
            else:
                cands = " ".join(f"{c}-{y}" for c, y in zip(imp.candidates, imp.labels))
            handle.write(f"{imp.impression_id}\t{imp.user}\t{format_time(imp.time)}\t{' '.join(imp.history)}\t{cands}\n")


def _entities_json(entities: Sequence[str]) -> str:
    return json.dumps([{"Label": e, "Type": "U", "WikidataId": e, "Confidence": 1.0,
                        "OccurrenceOffsets": [], "SurfaceForms": []} for e in entities])


def write_news(path: str | os.PathLike, items: Iterable[NewsItem]) -> None:
    with Path(path).open("w", encoding="utf-8", newline="") as handle:
        for item in items:
            url = item.url or (f"https://{item.provider}/{item.news_id}" if item.provider != UNKNOWN else "")
            cols = [item.news_id, item.category, item.subcategory, item.title, item.abstract, url,
                    _entities_json(item.entities), "[]"]
            handle.write("\t".join(_one_line(c) for c in cols) + "\n")


def _one_line(text: str) -> str:
    return text.replace("\t", " ").replace("\n", " ").replace("\r", " ")
