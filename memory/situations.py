"""The everyday situations a preference can bear on ("cooking", "travel", "movies and tv", …): a fixed,
general list embedded once, so a statement and a query are compared by the situations they touch as
well as by their own words. "Prefers vegetarian options" and "What should I cook for friends?" share
almost no words and a low cosine, but both sit in "cooking" (and "food and drink").

The list is a general map of life areas, written once, not fitted to any benchmark's topics; a
statement's ``applies_to`` (written when it is stored) names its nearest situations for people.
"""

from __future__ import annotations

import threading

import numpy as np

from memory.embeddings import Embedder

#: name -> the situations it covers (what is embedded)
SITUATIONS: dict[str, str] = {
    "cooking": "cooking at home, recipes, meal ideas, what to cook, baking, dinner for guests",
    "dining out": "restaurants, cafes, eating out, ordering food, local cuisine, where to eat",
    "food and drink": "food, snacks, drinks, groceries, ingredients, nutrition, diet",
    "travel": "travel, trips, vacations, destinations, itineraries, sightseeing, tours",
    "lodging": "hotels, accommodation, where to stay, rentals, resorts",
    "transportation": "flights, airlines, trains, buses, driving, commuting, getting around",
    "outdoor activities": "hiking, outdoor adventures, camping, excursions, parks, nature",
    "sports and fitness": "exercise, workouts, gym, fitness, sports, training",
    "health": "health, medical care, medications, doctors, symptoms, treatment",
    "beauty and personal care": "skincare, makeup, cosmetics, hair care, grooming",
    "clothing": "clothes, outfits, fashion, shoes, accessories, what to wear",
    "home": "home decor, furniture, interior design, rooms, household items, garden",
    "shopping": "buying things, product recommendations, gifts, stores, brands",
    "vehicles": "cars, vehicles, buying a car, motorcycles, car features",
    "technology": "phones, computers, apps, gadgets, software, electronics",
    "movies and tv": "movies, films, TV shows, series, streaming, documentaries",
    "music": "music, songs, artists, albums, concerts, playlists",
    "books and reading": "books, novels, reading, authors, literature, podcasts",
    "games": "video games, board games, mobile games, gaming, puzzles",
    "events and nightlife": "events, parties, festivals, nightlife, social gatherings, crowds",
    "learning": "learning, studying, courses, classes, school, exams, teaching methods",
    "work": "job, career, workplace, office, remote work, colleagues, meetings",
    "where to live": "moving, cities to live in, neighborhoods, renting, housing, relocation",
    "money": "budget, spending, saving, investing, prices, costs",
    "family and relationships": "family, children, partner, friends, parenting, relationships",
    "pets and animals": "pets, dogs, cats, animals, pet care",
    "hobbies": "hobbies, crafts, art, photography, DIY projects",
    "leisure": "things to do, weekend plans, fun activities, relaxing, entertainment",
}
#: softmax temperature over cosine similarities to the situations (MiniLM cosines differ by hundredths)
TEMPERATURE = 0.05
_cache: dict[int, np.ndarray] = {}
_lock = threading.Lock()


def situation_vectors(embedder: Embedder) -> np.ndarray:
    """(len(SITUATIONS), dim) unit vectors, embedded once per embedder."""
    with _lock:
        if id(embedder) not in _cache:
            _cache[id(embedder)] = embedder.embed([f"{name}: {what}" for name, what in SITUATIONS.items()])
        return _cache[id(embedder)]


def profiles(vectors: np.ndarray, embedder: Embedder) -> np.ndarray:
    """Each row: a probability distribution over the situations (softmax of cosine / temperature)."""
    vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, embedder.dim)
    logits = vectors @ situation_vectors(embedder).T / TEMPERATURE
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def applies_to(vector: np.ndarray, embedder: Embedder, top: int = 2, min_share: float = 0.15) -> list[str]:
    """The names of a statement's nearest situations (at most ``top``, each with >= ``min_share``)."""
    profile = profiles(vector, embedder)[0]
    names = list(SITUATIONS)
    ranked = np.argsort(-profile)[:top]
    return [names[i] for i in ranked if profile[i] >= min_share] or [names[int(ranked[0])]]
