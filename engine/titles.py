"""Titles in a message: "more like <title>", and titles named anywhere ("I loved Scream", "not
another Toy Story", "fargo was great"), liked or turned down by the words around them, with a
question when two catalog items share the title. Mixed into ``engine.request.RequestParser``."""

from __future__ import annotations

import re
from collections.abc import Sequence

from engine.request_words import (
    DISLIKED_AFTER,
    DISLIKED_BEFORE,
    FILLER,
    LIKE_CUE,
    LIKE_STOP,
    LIKED_AFTER,
    LIKED_BEFORE,
    MAX_TITLE_WORDS,
    ORDINAL_REF,
    ORDINAL_WORDS,
    NEGATIONS,
    TITLE_NEGATIONS,
    TITLE_SMALL_WORDS,
    WORD_DECADES,
    normalize,
)


def _loose(phrase: str) -> str:
    """A pattern for ``phrase``'s words as a message may write them (any punctuation between them,
    apostrophes anywhere)."""
    return r"[^0-9a-z]+".join("'?".join(map(re.escape, w)) for w in normalize(phrase).split())


# After a "like" cue, a phrase that opens with one of these describes what is wanted instead of
# naming it (a title it named would have been found first).
DESCRIBING = {"a", "an", "some", "any"}


class TitleReading:
    """Needs ``find_title``, ``exact_title``, ``same_title``, ``item_of`` and ``phrases`` on the parser."""

    def _like(self, text: str, request, shown: Sequence[str] = ()) -> str:
        """Resolve "more like <title>" and cut the title out of the text (its words are no request).
        The longest run of words after the cue that names a catalog title wins, so "more like
        Escape from New York" keeps its "from", "Mr. Holland's Opus" its full stop, and "more like
        Alien but from the 80s" stops at Alien. "More like the second one" points into ``shown``,
        the last answer's items in the order they were listed."""
        match = LIKE_CUE.search(text)
        if not match:
            return text
        place = ORDINAL_REF.match(match.group(1))
        if place is not None:
            self._like_place(place, request, shown)
            return text[:match.start()] + " " + match.group(1)[place.end():]
        words = match.group(1).split()
        # "like a good thriller" describes; only a title said in full ("like A Fish Called Wanda") names.
        describing = words[0].lower() in DESCRIBING
        for n in range(min(len(words), MAX_TITLE_WORDS), 0, -1):
            title = " ".join(words[:n]).strip(" \"'\u201c\u201d,.!?;")
            if not title or (n == 1 and title in FILLER):
                continue
            found = self._find(title, exact=describing)
            if found is not None:
                if not self._ask_which(found, request, disliked=False):
                    request.like_item, request.like_title = str(found.item_id), found.title
                    request.like_categories = [c for c in found.categories if normalize(c) not in ("unknown", "")]
                return text[:match.start()] + " " + " ".join(words[n:])
        if describing:
            # "something like a 70s car chase flick": a description, not a name; its words are the request.
            return text[:match.start()] + " " + match.group(1)
        stop = LIKE_STOP.search(match.group(1))
        shown = (match.group(1)[:stop.start()] if stop else match.group(1)).strip(" \"'\u201c\u201d,")
        request.notes.append(f'No title in the catalog matches "{shown}": "more like" was not applied.')
        return text[:match.start()] + " " + (match.group(1)[stop.start():] if stop else "")

    def _like_place(self, place, request, shown: Sequence[str]) -> None:
        """The item at a place of the last answer ("the second one", "#3", "the last") as the anchor."""
        said = place.group(0).strip()
        number = ORDINAL_WORDS[place["word"]] if place["word"] else int(place["nth"] or place["num"])
        if not shown:
            request.notes.append(f'"More like {said}": there is no earlier list in this conversation to point '
                                 "into, so it was not applied.")
            return
        if number == 0 or number > len(shown):
            request.notes.append(f'"More like {said}": the last answer listed {len(shown)} items, so it was not '
                                 "applied.")
            return
        try:
            item = self.item_of(shown[number - 1 if number > 0 else -1]) if self.item_of is not None else None
        except KeyError:                         # shown before the catalog was rebuilt without it
            item = None
        if item is None:
            request.notes.append(f'"More like {said}": that item is not in the catalog now, so it was not applied.')
            return
        request.like_item, request.like_title = str(item.item_id), item.title
        request.like_categories = [c for c in item.categories if normalize(c) not in ("unknown", "")]
        # "another one like the first" points into the list it asks more of: it turns none of it down.
        request.not_that = False

    def _find(self, title: str, exact: bool = False):
        """The catalog item ``title`` names (``exact``: only a title said in full), or None."""
        lookup = self.exact_title if exact else self.find_title
        if lookup is None:
            return None
        results = lookup(title)
        return results[0] if results and (getattr(results[0], "score", None) or 0) >= 0.8 else None

    def _titles(self, message: str, text: str, request) -> str:
        """Catalog titles named anywhere ("I loved Scream", "not another Toy Story", "fargo was
        great"): quoted or capitalised spans, the words after a liking or disliking cue, and any run
        of two or more words that is exactly a catalog title. The words around a title say whether
        it was liked or turned down. Returns the text with the titles cut out."""
        if self.find_title is None:
            return text
        lowered = normalize(text)
        tokens = lowered.split()
        candidates: list[tuple[str, float, bool]] = []          # (span, score floor, exact lookup only)
        for quoted in re.findall(r"[\"\u201c]([^\"\u201d]{2,80})[\"\u201d]", message):
            candidates.append((quoted, 0.85, False))
        run: list[str] = []
        for word in re.findall(r"[\w'&:.-]+", message) + [""]:
            if word[:1].isupper() or (word[:1].isdigit() and run) or (run and word.lower() in TITLE_SMALL_WORDS):
                run.append(word)
                continue
            while run and run[-1].lower() in TITLE_SMALL_WORDS:
                run.pop()
            for start in range(len(run)):
                candidates.append((" ".join(run[start:start + MAX_TITLE_WORDS]), 0.95, False))
            run = []
        for position in range(1, len(tokens)):
            before = " ".join(tokens[:position])
            if (LIKED_BEFORE.search(before) or DISLIKED_BEFORE.search(before)) and tokens[position] not in ("a", "an"):
                for n in range(min(MAX_TITLE_WORDS, len(tokens) - position), 0, -1):
                    candidates.append((" ".join(tokens[position:position + n]), 0.9, n == 1))
        if self.exact_title is not None:
            for n in range(min(MAX_TITLE_WORDS, len(tokens)), 0, -1):
                for start in range(len(tokens) - n + 1):
                    span = " ".join(tokens[start:start + n])
                    after = " ".join(tokens[start + n:start + n + 4])
                    # Without a cue, a title must be two words or more besides a leading article.
                    bare = tokens[start + (tokens[start] in ("a", "an", "the")):start + n]
                    if len(bare) > 1 or (bare and (LIKED_AFTER.match(after) or DISLIKED_AFTER.match(after))):
                        candidates.append((span, 1.0, True))
        tried: set[str] = set()
        for span, floor, exact in candidates:
            key = normalize(span)
            words = key.split()
            if not key or key in tried or all(w in FILLER or w in NEGATIONS for w in words) or words[0] in NEGATIONS:
                continue
            tried.add(key)
            if key in self.phrases or key in WORD_DECADES or re.fullmatch(r"[\d ]+s?", key) or \
                    not re.search(rf"\b{re.escape(key)}\b", lowered):
                continue
            hits = self.exact_title(span) if exact and self.exact_title is not None else self.find_title(span)
            if not hits or (getattr(hits[0], "score", None) or 0) < floor:
                continue
            found = hits[0]
            where = re.search(rf"\b{re.escape(key)}\b", lowered)
            window = lowered[:where.start()].split()[-5:]
            if "but" in window:                     # "loved X but not Y": only what follows "but" speaks of Y
                window = window[len(window) - window[::-1].index("but"):]
            after = lowered[where.end():]
            disliked = bool(DISLIKED_AFTER.match(after)) or (
                bool(set(window) & TITLE_NEGATIONS or DISLIKED_BEFORE.search(" ".join(window)))
                and not LIKED_AFTER.match(after))
            if self._ask_which(found, request, disliked):
                pass
            elif disliked:
                request.dislike_items.append(str(found.item_id))
                request.dislike_titles.append(found.title)
            elif request.like_item is None:
                request.like_item, request.like_title = str(found.item_id), found.title
                request.like_categories = [c for c in found.categories if normalize(c) not in ("unknown", "")]
            # The title's words are no request ("Star Wars" asks for no War), nor are the words that
            # judge it ("babe was way too childish" asks for nothing childish, "couldnt stand" for no Stand).
            lowered = lowered[:where.start()] + " " + lowered[where.end():]
            cue = (DISLIKED_BEFORE if disliked else LIKED_BEFORE).search(" ".join(window))
            judged = (DISLIKED_AFTER if disliked else LIKED_AFTER).match(after)
            before = rf"(?:\b{_loose(cue.group(0))}[^0-9a-z]+)?" if cue and normalize(cue.group(0)) else ""
            tail = rf"(?:[^0-9a-z]+{_loose(judged.group(0))}\b)?" if judged and normalize(judged.group(0)) else ""
            text = re.sub(rf"{before}(?:\bthe\s+)?\b{_loose(key)}\b(?:,\s*the\b)?{tail}", " ", text)
            tried.add(normalize(found.title))
        return text

    def _ask_which(self, found, request, disliked: bool) -> bool:
        """When two catalog items share ``found``'s title, set a question asking which one."""
        same = self.same_title(found.title) if self.same_title is not None else []
        if len(same) < 2:
            return False
        labels = [f"{i.title} ({i.year})" if i.year else f"{i.title} [{i.item_id}]" for i in same]
        request.question = f"Which {found.title} do you mean: " + ", ".join(labels[:-1]) + f" or {labels[-1]}?"
        request.options = [{"label": label, "answer": [str(i.year)] if i.year else [str(i.item_id)],
                            "item_id": str(i.item_id), "title": i.title, "categories": list(i.categories),
                            "disliked": disliked} for label, i in zip(labels, same)]
        return True
