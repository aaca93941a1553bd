"""The request parser's vocabulary: everyday words for categories, negations, cues around titles,
year words, and facets a catalog may lack. Words only: what they mean for a catalog is decided
against that catalog's own vocabulary (engine/request.py, engine/understanding.py)."""

from __future__ import annotations

import re

# Everyday words for categories. Targets are resolved against the catalog's vocabulary; a target
# the catalog lacks is dropped, so a product catalog simply never matches "scary".
SYNONYMS: dict[str, list[str]] = {
    "funny": ["Comedy"], "hilarious": ["Comedy"], "comic": ["Comedy"], "comedic": ["Comedy"],
    "humor": ["Comedy"], "humour": ["Comedy"], "humorous": ["Comedy"], "laugh": ["Comedy"], "laughs": ["Comedy"],
    "scary": ["Horror"], "spooky": ["Horror"], "creepy": ["Horror"], "frightening": ["Horror"],
    "terrifying": ["Horror"], "slasher": ["Horror"], "scare": ["Horror"], "scares": ["Horror"],
    "kids": ["Children's", "Children", "Kids", "Animation"], "kid": ["Children's", "Children", "Kids", "Animation"],
    "children": ["Children's", "Children", "Kids", "Animation"], "family": ["Children's", "Family", "Animation"],
    "cartoon": ["Animation"], "cartoons": ["Animation"], "animated": ["Animation"],
    "science fiction": ["Sci-Fi", "Science Fiction"], "scifi": ["Sci-Fi", "Science Fiction"],
    "futuristic": ["Sci-Fi", "Science Fiction"],
    "romantic": ["Romance"], "love story": ["Romance"], "love stories": ["Romance"], "romcom": ["Romance"],
    "thrilling": ["Thriller"], "suspense": ["Thriller"], "suspenseful": ["Thriller"], "thrillers": ["Thriller"],
    "whodunit": ["Mystery"], "detective": ["Mystery"], "mysteries": ["Mystery"],
    "gangster": ["Crime"], "gangsters": ["Crime"], "mafia": ["Crime"], "heist": ["Crime"], "mob": ["Crime"],
    "military": ["War"], "wartime": ["War"], "cowboy": ["Western"], "cowboys": ["Western"],
    "singing": ["Musical"], "musicals": ["Musical"], "documentaries": ["Documentary"], "docs": ["Documentary"],
    "magic": ["Fantasy"], "magical": ["Fantasy"], "fairy tale": ["Fantasy"],
    "dramatic": ["Drama"], "tearjerker": ["Drama"], "noir": ["Film-Noir"],
}

NEGATIONS = {"no", "not", "without", "avoid", "nothing", "none", "except", "skip", "hate", "excluding",
             "enough", "dont", "never", "less", "sick", "tired", "minus", "but", "isnt", "arent", "wasnt",
             "neither", "nor", "doesnt", "didnt"}
LIFT_AFTER = re.compile(r"^\s*(?:is|are)\s+(?:fine|ok|okay|alright|all right|good|allowed|back)\b|^\s+again\b")
LIFT_BEFORE = re.compile(r"(?:dont mind|do not mind|fine with|ok with|okay with|allow|bring back|open to)\s+$")
RESET = re.compile(r"\b(?:start over|start again|reset|clear (?:all|everything|the filters?)|forget (?:it|all|that|everything)|"
                   r"no preference|anything goes|whatever you like|surprise me)\b")
ANY_CATEGORY = re.compile(r"\bany (?:genre|category|kind|type)s?\b")
ANY_YEAR = re.compile(r"\bany (?:year|decade|era|time|period|age)s?\b")
NOT_THAT = re.compile(r"\b(?:not (?:that|this|these|those)(?: ones?)?|something else|anything else|other ones|"
                      r"different ones|none of (?:these|those|them)|seen (?:it|them|those|these)|another one|"
                      r"something different)\b")
LIKE_CUE = re.compile(r"(?:\b(?:more like|similar to|something like|stuff like|things like|films? like|movies? like|ones? like|"
                      r"anything like|in the vein of|along the lines of|the likes of|resembling)|^\s*like)\s+(.+)$")
# Words that end the title after a "more like" cue (and a place in the list, below).
_LIKE_STOP_WORDS = r"but|from|without|and no|and not|though|except|in the|before|after|since"
LIKE_STOP = re.compile(r"\s+(?:" + _LIKE_STOP_WORDS + r")\b|[.!?;]")
MAX_TITLE_WORDS = 10
# A place in the last answer's list, after a "more like" cue: "the second one", "your top pick", "#3",
# "number 4", "the last". Only when nothing but a generic noun follows it (up to LIKE_STOP), so "more
# like The Second Jungle Book" is still a title.
ORDINAL_WORDS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
                 "eighth": 8, "ninth": 9, "tenth": 10, "top": 1, "last": -1}
ORDINAL_REF = re.compile(r"^(?:(?:the|your|that|this)\s+)?(?:(?P<word>" + "|".join(ORDINAL_WORDS)
                         + r")|(?P<nth>\d{1,3})(?:st|nd|rd|th)|(?:#\s*|number\s+|no\.?\s*)(?P<num>\d{1,3}))"
                         r"(?:\s+(?:one|pick|item|title|movie|film|show|book|product|result|suggestion|"
                         r"recommendation|on (?:the|your) list))?\s*(?=$|[,.!?;]|\s+(?:" + _LIKE_STOP_WORDS
                         + r"|and|please)\b)")


def ordinal_number(word: str) -> int | None:
    """The place one word names in a list, counted from 1 ("second", "3rd", "top"), -1 for "last",
    None for a word that names no place. Read by "more like the second one" and by answers to a
    question the last turn asked."""
    if word in ORDINAL_WORDS:
        return ORDINAL_WORDS[word]
    match = re.fullmatch(r"(\d{1,3})(?:st|nd|rd|th)", word)
    return int(match.group(1)) if match else None


WORD_DECADES = {"twenties": 20, "thirties": 30, "forties": 40, "fifties": 50, "sixties": 60, "seventies": 70,
                "eighties": 80, "nineties": 90}
RECENT = {"recent", "new", "newer", "newest", "latest", "modern", "recently"}
OLD = {"old", "older", "classic", "classics", "vintage", "oldies", "golden age"}
# Words that carry no wish of their own ("please give me a movie"): never reported as unparsed.
FILLER = set(["a", "an", "the", "and", "or", "of", "for", "to", "in", "on", "at", "by", "with", "me", "my", "i", "im", "id", "ive", "we", "us", "you", "your", "it", "its", "is", "are", "be", "was", "were", "am", "do", "does", "did", "can", "could", "would", "will", "should", "please", "pls", "some", "something", "anything", "any", "one", "ones", "want", "wanted", "need", "like", "love", "prefer", "give", "show", "find", "recommend", "suggest", "suggestion", "suggestions", "pick", "get", "see", "watch", "watching", "tonight", "today", "now", "next", "movie", "movies", "film", "films", "item", "items", "thing", "things", "kind", "sort", "type", "what", "which", "how", "maybe", "perhaps", "really", "very", "quite", "just", "also", "too", "so", "thanks", "thank", "mood", "feel", "feeling", "in", "again", "actually", "instead", "then", "let", "lets", "ok", "okay", "yes", "yeah", "good", "great", "nice", "well", "more", "most", "bit", "little", "lot", "from", "since", "until", "till", "after", "before", "between", "up", "year", "years", "decade", "decades", "era", "released", "made", "old", "new", "s", "mind", "fine", "with", "that", "this", "these", "those", "other", "else", "different", "another", "seen", "them", "about", "featuring", "involving", "lots", "plenty", "hey", "hi", "hello", "recommendations", "recommendation", "ideas", "idea", "loved", "liked", "enjoyed", "adored", "dug", "awesome", "cool", "stuff", "got", "have", "has", "had", "something", "someone", "somebody", "there", "here",
              # function words and chat forms that carry no content (a leftover of them is no content wish)
              "when", "whenever", "where", "while", "than", "through", "thru", "around", "onward", "onwards", "same",
              "others", "whats", "thats", "gimme", "lookin", "looking", "somethin", "anythin", "tonite", "n", "af",
              "plz", "dunno", "idk", "whatever", "ideally", "probably", "definitely", "honestly", "basically", "hmm",
              "hm", "umm", "um", "uh", "lol", "tho", "though", "wanna", "gonna", "gotta", "u", "ur", "ya", "go",
              "back", "must", "decent", "amazing", "times", "all", "every", "each", "such", "much", "many", "only",
              "even", "still", "ever", "always", "usually", "watched", "saw", "kinda", "sorta", "best", "worst",
              "favorite", "favourite", "whole", "sure"])


# Titles named anywhere: the words before a title say whether it was liked or turned down.
LIKED_BEFORE = re.compile(r"\b(?:loved|liked|enjoyed|adored|love|like|likes|fan of|into|more of|a lot of|really dug|dug|"
                          r"reminds me of|such as|same vibe as|vibe as|vibes of|the style of|the spirit of)\s*$")
DISLIKED_BEFORE = re.compile(r"\b(?:hated|hate|disliked|dislike|(?:didnt|dont|did not|do not|never|couldnt|cant|wasnt into) "
                             r"(?:really |much |quite |even )?(?:like|enjoy|love|care for|get into|dig|stand)|"
                             r"cant stand|not another|no more|sick of|tired of|bored of|anything but|not like|unlike|"
                             r"except|not|no|nothing like|avoid|skip)\s*$")
LIKED_AFTER = re.compile(r"^\s*(?:(?:was|is|were|are)\s+(?:(?:so|really|just|pretty|very)\s+)?(?:great|amazing|awesome|brilliant|good|"
                         r"lovely|fantastic|perfect|the best|my jam|my favou?rite|incredible|excellent|fun|wonderful)|vibes?\b|"
                         r"type of|kind of|sort of|style\b|blew me away|rocks\b|rules\b)")
DISLIKED_AFTER = re.compile(r"^\s*(?:(?:was|is|were|are)\s+(?:(?:so|really|just|pretty|very)\s+)?(?:bad|awful|terrible|boring|rubbish|"
                            r"meh|dull|overrated|garbage|trash|the worst|a letdown|disappointing|"
                            r"(?:(?:way|far|much|a bit|a little|just|kind of|kinda) )?too \w+)|sucked|sucks|"
                            r"(?:and |but )?(?:it )?(?:wasnt|was not|isnt) (?:impressed|great|good|for me))")
TITLE_NEGATIONS = {"no", "not", "never", "nothing", "dont", "didnt", "doesnt", "wasnt", "hate", "hated", "without",
                   "avoid", "skip", "except", "none"}
TITLE_SMALL_WORDS = {"of", "the", "a", "an", "and", "in", "on", "to", "for", "with", "at", "from", "vs", "&", "de", "la", "le"}
# Numbers that are not years: ages, counts, durations (cut out before years are read).
AGE = re.compile(r"\b(?:my |our |a |an )?(\d{1,2})[ -]?(?:years?|yrs?|yo)[ -]?olds?\b|\b(?:aged?|ages) (\d{1,2})(?: ?(?:to|-|and) ?\d{1,2})?\b"
                 r"|\b(\d{1,2}) ?(?:yo|y o)\b")
COUNT = re.compile(r"\b(?:top|best|give me|show me|list|just|only)? ?\d{1,3} (?:movies?|films?|items?|picks?|products?|"
                   r"recommendations?|options?|suggestions?|things?|ideas?|titles?|ones?)\b|\btop \d{1,3}\b")
# Facets a catalog may lack; the key is the attribute name a catalog would need to answer it.
FACETS = {
    "length": re.compile(r"\b(?:under|over|less than|more than|at most|at least|about|around|no longer than|"
                         r"shorter than|longer than)? ?\d+(?:\.\d+)? ?(?:and a half )?(?:hours?|hrs?|h|minutes?|mins?)(?: long)?\b"
                         r"|\b(?:runtime|running time|run time)\b"),
    "language": re.compile(r"\b(?:in|with) (?:french|spanish|german|italian|japanese|chinese|mandarin|cantonese|korean|hindi|"
                           r"russian|swedish|portuguese|english) ?(?:audio|subtitles|language)?\b"
                           r"|\b(?:french|spanish|german|italian|japanese|korean|chinese|hindi|foreign|english)[ -]language\b"
                           r"|\bsubtitle[sd]?\b|\bdubbed\b"),
    "cast": re.compile(r"\b(?:starring|with (?:the )?actors?|with (?:the )?actress|played by|acted by|featuring actors?)\b(?: [a-z]+){0,2}"),
    "director": re.compile(r"\b(?:directed by|director)\b(?: [a-z]+){0,2}"),
    "price": re.compile(r"(?:\$|£|€) ?\d+(?:\.\d+)?|\b\d+ (?:dollars|bucks|euros?|pounds)\b|\b(?:cheap|cheaper|affordable|"
                        r"inexpensive|pricey|expensive|on sale|discount(?:ed)?|price[ds]?|budget friendly)\b"),
    "rating": re.compile(r"\b(?:highly|top|best|well|critically) (?:rated|reviewed)\b|\b\d(?:\.\d)? stars?\b|\bstar rating\b|"
                         r"\b(?:ratings?|reviews?|imdb|rotten tomatoes|metacritic)\b"),
    "awards": re.compile(r"\b(?:oscars?|academy awards?|award[ -]?winn(?:ing|er)s?|awards?|golden globes?|won an? \w+ award)\b"),
    "shipping": re.compile(r"\b(?:free |fast |next day |same day |express )?(?:shipping|delivery|delivered|ships)\b"),
    "availability": re.compile(r"\b(?:free to stream|streaming|to stream|on netflix|on prime|on hulu|on disney plus|in stock)\b"),
    "size": re.compile(r"\b(?:in )?size \d+(?:\.\d)?\b|\b(?:size|sizes) (?:small|medium|large|xs|s|m|l|xl|xxl)\b"),
}
FACET_WORDS = {"length": "running time", "language": "language", "cast": "cast", "director": "director", "price": "price",
               "rating": "rating", "awards": "awards", "shipping": "shipping", "availability": "streaming or stock",
               "size": "size"}
NEGATED_YEAR = (r"\b(?:nothing|not|no|never|none)(?: (?:movies?|films?|anything|something|stuff|items?|products?|ones?|made|"
                r"released|produced|from|thats|that|is|are|was|were|any|really|too|much|way|at all)){0,3} ")
FEW = {"few": 5, "couple": 2, "couple of": 2, "several": 5, "two": 2, "three": 3, "four": 4, "five": 5, "ten": 10}
PLAIN_CONTENT = re.compile(r"\b(?:(?:a|an|the|some|any) [a-z]+|movies|films|items|something|anything|ones|stories|products|"
                           r"stuff|books|shows|games) (?:about|featuring|involving|set in|set on|based on)\b|^(?:about|featuring) ")


def normalize(text: str) -> str:
    """Lower case, apostrophes dropped, every other non-alphanumeric run a single space."""
    text = text.lower().replace("'", "").replace("\u2019", "")
    return re.sub(r"[^0-9a-z]+", " ", text).strip()


def _forms(name: str) -> set[str]:
    base = normalize(name)
    forms = {base, base.replace(" ", "")}
    for form in list(forms):
        forms |= {form + "s", form + "es"}
        if form.endswith("ies"):
            forms.add(form[:-3] + "y")
        if form.endswith("s"):
            forms.add(form[:-1])
    return {f for f in forms if f}
