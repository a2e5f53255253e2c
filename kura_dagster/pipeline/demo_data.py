"""The built-in demo data set: a few hundred varied conversations over fourteen topics.

Generated deterministically by this module from templates and slot values written for it (no copied
text), so the default job runs anywhere without a download. ``demo_conversations(n, seed)`` gives the
same list for the same arguments; each conversation's metadata says which topic and template made it.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

from kura_dagster.types import Conversation, Message

# topic -> (requests, follow-ups, slot values). "{x}" and "{y}" are filled from the topic's slot lists.
_TOPICS: dict[str, tuple[list[str], list[str], dict[str, list[str]]]] = {
    "python_debugging": (
        ["My Python script raises a {x} when I {y}. How do I fix it?",
         "Why does my Python code throw {x} whenever I {y}?",
         "Help me debug a {x} in Python that happens when I {y}."],
        ["Can you show the corrected code with comments?", "How could I write a unit test that catches this?"],
        {"x": ["KeyError", "TypeError", "IndexError", "RecursionError", "UnicodeDecodeError"],
         "y": ["read a CSV file with pandas", "loop over a nested dictionary", "parse JSON from an API",
               "sort a list of tuples", "open a file with accents in its name"]},
    ),
    "sql_queries": (
        ["Write a SQL query that finds {x} from a table of {y}.",
         "How do I get {x} in SQL when my table stores {y}?"],
        ["Can you make it faster with an index?", "Now rewrite it with a window function."],
        {"x": ["the top five customers by revenue", "duplicate email addresses", "the monthly active users",
               "the second highest salary per department", "orders without a matching invoice"],
         "y": ["orders and customers", "employees and departments", "web sessions", "invoices and payments"]},
    ),
    "cooking_recipes": (
        ["Give me a recipe for {x} that uses {y}.", "How do I cook {x} if I only have {y} in the kitchen?"],
        ["Can you make it vegan?", "How long will the leftovers keep in the fridge?"],
        {"x": ["a weeknight curry", "banana bread", "a lentil soup", "homemade pizza dough", "a stir fry"],
         "y": ["chickpeas and spinach", "ripe bananas", "a slow cooker", "whole wheat flour", "leftover rice"]},
    ),
    "travel_planning": (
        ["Plan a {x} itinerary for {y} on a modest budget.", "What should I see on a {x} trip to {y}?"],
        ["Which neighbourhood is best to stay in?", "How do I get around without renting a car?"],
        {"x": ["three-day", "one-week", "long weekend", "ten-day"],
         "y": ["Lisbon", "Kyoto", "the Scottish Highlands", "Mexico City", "Iceland's ring road"]},
    ),
    "fitness_training": (
        ["Design a {x} workout plan for someone who wants to {y}.",
         "I want to {y}. What {x} routine do you recommend?"],
        ["How should I adjust it if my knees hurt?", "What should I eat before training?"],
        {"x": ["four-week", "home", "beginner strength", "twice-weekly"],
         "y": ["run a first 10k", "build upper body strength", "improve flexibility", "lose some weight"]},
    ),
    "personal_finance": (
        ["How should I {x} if I earn {y}?", "Explain how to {x} on an income of {y}."],
        ["What if I also have student loans?", "Should I use an index fund for this?"],
        {"x": ["build an emergency fund", "start investing for retirement", "pay off credit card debt",
               "save for a house deposit"],
         "y": ["a modest monthly salary", "an irregular freelance income", "two part-time jobs"]},
    ),
    "creative_writing": (
        ["Write a short story about {x} set in {y}.", "Write a poem about {x}, set in {y}."],
        ["Make the ending more surprising.", "Rewrite it for a young audience."],
        {"x": ["a lighthouse keeper who finds a message", "a robot learning to paint", "two rival bakers",
               "a lost dog finding its way home"],
         "y": ["a stormy coastal village", "a city on Mars", "a medieval market town", "a snowy mountain pass"]},
    ),
    "email_drafting": (
        ["Draft a polite email to {x} about {y}.", "Help me write an email to {x} regarding {y}."],
        ["Make it shorter and more direct.", "Can you make the tone a little warmer?"],
        {"x": ["my landlord", "a client", "my manager", "a supplier"],
         "y": ["a late payment", "a broken heater", "rescheduling our meeting", "a request for a deadline extension"]},
    ),
    "math_homework": (
        ["Solve {x} and explain {y}.", "Can you help me with {x}? Please explain {y}."],
        ["Can you check my answer of 42?", "Give me a similar practice problem."],
        {"x": ["the equation 3x + 7 = 22", "the integral of x times sine x", "a probability question about two dice",
               "the area of a triangle with sides 5, 12 and 13"],
         "y": ["each step", "why the method works", "the intuition behind it"]},
    ),
    "career_advice": (
        ["How do I prepare for {x} as {y}?", "I am {y}. Give me advice on {x}."],
        ["What questions should I ask the interviewer?", "How do I explain a gap in my resume?"],
        {"x": ["a product manager interview", "asking for a raise", "changing careers into data science",
               "my first performance review"],
         "y": ["a recent graduate", "a mid-career teacher", "a self-taught developer"]},
    ),
    "language_learning": (
        ["How do I say {x} in {y}?", "Translate {x} into {y} and explain the grammar."],
        ["How would I say it more formally?", "Can you give me three example sentences?"],
        {"x": ["'where is the train station'", "'I would like to book a table for two'", "'nice to meet you'",
               "'could you speak more slowly'"],
         "y": ["Spanish", "Japanese", "German", "Portuguese"]},
    ),
    "home_gardening": (
        ["Why are my {x} {y}?", "What should I do about {x} that are {y}?"],
        ["Is it safe to use neem oil?", "When is the best time to repot them?"],
        {"x": ["tomato plants", "basil seedlings", "houseplants", "rose bushes"],
         "y": ["turning yellow", "wilting in the afternoon", "covered in small white bugs", "not flowering"]},
    ),
    "science_explainers": (
        ["Explain {x} in simple terms for {y}.", "How does {x} work? Explain it to {y}."],
        ["Can you give a real-world example?", "What is a common misconception about it?"],
        {"x": ["photosynthesis", "how vaccines train the immune system", "black holes", "plate tectonics",
               "how batteries store energy"],
         "y": ["a ten-year-old", "a high school student", "someone with no science background"]},
    ),
    "legal_questions": (
        ["What are my rights as {x} if {y}?", "As {x}, what can I do when {y}?"],
        ["Do I need a lawyer for this?", "What documents should I keep?"],
        {"x": ["a tenant", "a freelancer", "an employee", "a small business owner"],
         "y": ["the deposit is not returned", "a client refuses to pay an invoice", "my contract is terminated early"]},
    ),
}

_REPLIES = [
    "Here is a clear way to approach it. {detail} Start with the basics, check each step, and adjust as you go.",
    "Good question. {detail} If anything is unclear, tell me what you tried and I will refine the answer.",
    "Let's break this down. {detail} This should cover the common cases; edge cases may need more care.",
]
_DETAILS = {
    "first": "First, consider what you are trying to achieve and the constraints you mentioned.",
    "second": "Here is the revised version, with the changes you asked for highlighted.",
}


def demo_conversations(n: int = 320, seed: int = 7) -> list[Conversation]:
    """``n`` conversations spread evenly over the demo topics, the same for the same ``(n, seed)``."""
    rng = random.Random(seed)
    topics = sorted(_TOPICS)
    start = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
    out = []
    for i in range(n):
        topic = topics[i % len(topics)]
        requests, follow_ups, slots = _TOPICS[topic]
        template = rng.randrange(len(requests))
        request = requests[template].format(x=rng.choice(slots["x"]), y=rng.choice(slots["y"]))
        created = start + timedelta(minutes=37 * i + rng.randrange(30))
        messages = [Message(created_at=created, role="user", content=request)]
        messages.append(Message(created_at=created + timedelta(seconds=20), role="assistant",
                                content=rng.choice(_REPLIES).format(detail=_DETAILS["first"])))
        turns = rng.choice((1, 2, 2))
        if turns == 2:
            messages.append(Message(created_at=created + timedelta(minutes=2), role="user",
                                    content=rng.choice(follow_ups)))
            messages.append(Message(created_at=created + timedelta(minutes=2, seconds=25), role="assistant",
                                    content=rng.choice(_REPLIES).format(detail=_DETAILS["second"])))
        out.append(Conversation(
            chat_id=f"demo-{i:05d}",
            created_at=created,
            messages=messages,
            metadata={"source": "kura-dagster-demo", "demo_topic": topic, "template": template,
                      "user_rating": rng.choice((3, 4, 4, 5)), "flagged": rng.random() < 0.05},
        ))
    return out
