"""The built-in demo data set: varied, realistic conversations over sixteen topics.

Generated deterministically by this module from templates and slot values written for it (no copied
text), so the default job runs anywhere without a download. ``demo_conversations(n, seed)`` gives the
same list for the same arguments; each conversation's metadata says which topic and template made it.

Every topic has several request phrasings with three slots of many values each, its own follow-up
questions and its own assistant answers (built from sentences that reuse the user's slot values), so a
few hundred conversations read differently from each other and 100,000 (the benchmark) are still
overwhelmingly distinct texts rather than copies.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from kura_dagster.types import Conversation, Message


@dataclass(frozen=True)
class Topic:
    requests: tuple[str, ...]
    """The user's opening request; ``{a}``, ``{b}`` and ``{c}`` are filled from ``slots``."""
    slots: dict[str, tuple[str, ...]]
    answers: tuple[str, ...]
    """Sentences for the assistant's first reply (may use the same slots): the first, then two others."""
    follow_ups: tuple[str, ...]
    follow_answers: tuple[str, ...]
    """The assistant's answer to each follow-up, in the same order."""

    def __post_init__(self) -> None:
        if len(self.follow_ups) != len(self.follow_answers):
            raise ValueError("every follow-up needs its answer")


def _t(requests, slots, answers, follow_ups, follow_answers) -> Topic:
    return Topic(tuple(requests), {k: tuple(v) for k, v in slots.items()}, tuple(answers), tuple(follow_ups),
                 tuple(follow_answers))


TOPICS: dict[str, Topic] = {
    "python_debugging": _t(
        ["My Python script raises a {a} when I {b}. How do I fix it?",
         "Why does my Python code throw a {a} whenever I {b}?",
         "Help me debug a {a} in Python that happens when I {b} {c}.",
         "I keep getting a {a} in my Python project when I {b}; what am I doing wrong?"],
        {"a": ["KeyError", "TypeError", "IndexError", "RecursionError", "UnicodeDecodeError", "AttributeError",
               "ValueError", "ModuleNotFoundError", "ZeroDivisionError", "FileNotFoundError", "MemoryError",
               "PermissionError"],
         "b": ["read a CSV file with pandas", "loop over a nested dictionary", "parse JSON from an API",
               "sort a list of tuples", "open a file with accents in its name", "call a method on a dataclass",
               "import my own module", "merge two dataframes", "run a function recursively",
               "convert strings to integers", "use asyncio with requests", "pickle a lambda", "slice a numpy array",
               "read environment variables"],
         "c": ["inside a Jupyter notebook", "on Windows", "in a Docker container", "after upgrading Python",
               "in a Flask app", "in a cron job", "on a Raspberry Pi", "in my unit tests", "in production only"]},
        ["A {a} here usually means the data is not shaped the way the code expects when you {b}.",
         "Print the value just before the failing line, or run the script under pdb, to see what it really is.",
         "The traceback's last frame points at the exact line; start there and work backwards.",
         "Wrap the risky call in a try/except that logs the input, so you can see which record breaks.",
         "Check whether the behaviour differs {c}; paths, encodings and versions often change there.",
         "A minimal reproduction of a few lines usually reveals the cause faster than reading the whole program."],
        ["Can you show the corrected code with comments?", "How could I write a unit test that catches this?",
         "Is there a way to log more detail when it fails?"],
        ["Here is the corrected version; the comments mark each change and why it matters.",
         "A small pytest case with the failing input pinned down will stop this from coming back.",
         "Adding logging with the offending value and the line number makes the next failure easy to read."],
    ),
    "sql_queries": _t(
        ["Write a SQL query that finds {a} from a table of {b}.",
         "How do I get {a} in SQL when my table stores {b}?",
         "My {c} query for {a} is slow on a table of {b}. Can you rewrite it?",
         "What is the cleanest {c} SQL to list {a} given {b}?"],
        {"a": ["the top five customers by revenue", "duplicate email addresses", "the monthly active users",
               "the second highest salary per department", "orders without a matching invoice",
               "a running total of sales", "users who churned last quarter", "the median order value",
               "products never ordered", "the busiest hour of each day", "customers with three or more returns",
               "week over week growth"],
         "b": ["orders and customers", "employees and departments", "web sessions", "invoices and payments",
               "product reviews", "support tickets", "subscription events", "warehouse shipments",
               "app logins"],
         "c": ["PostgreSQL", "MySQL", "SQLite", "SQL Server", "BigQuery", "Snowflake", "DuckDB"]},
        ["To find {a}, group the rows of {b} by the key you care about and filter with HAVING.",
         "A common table expression keeps the steps readable and lets you test each part on its own.",
         "In {c} a window function such as ROW_NUMBER or SUM OVER does this without a self join.",
         "Make sure the join columns are indexed, otherwise the planner scans the whole table.",
         "Check the result against a small hand-made sample before running it on all of {b}."],
        ["Can you make it faster with an index?", "Now rewrite it with a window function.",
         "What would the EXPLAIN output tell me here?"],
        ["A composite index on the filter and join columns lets the planner skip most rows.",
         "With a window function the query reads the table once and ranks rows within each partition.",
         "EXPLAIN shows whether an index is used; a sequential scan on a large table is the warning sign."],
    ),
    "web_development": _t(
        ["How do I {a} in {b} without {c}?", "My {b} app fails to {a}. What should I check?",
         "Show me how to {a} using {b}, ideally without {c}.",
         "What is the best practice to {a} in a {b} project?"],
        {"a": ["handle form validation", "fetch data from a REST API", "add dark mode", "lazy load images",
               "manage global state", "set up client side routing", "upload files with progress",
               "debounce a search box", "render a sortable table", "add authentication with JWT",
               "make the layout responsive", "cache API responses"],
         "b": ["React", "Vue", "Svelte", "plain JavaScript", "Angular", "Next.js", "TypeScript", "Astro"],
         "c": ["extra libraries", "breaking accessibility", "hurting performance", "a full page reload",
               "jQuery", "duplicating code", "a backend change"]},
        ["In {b}, the usual pattern to {a} is to keep the logic in a small component or hook.",
         "Keep the state close to where it is used, and lift it only when two parts need it.",
         "Browser developer tools will show failed requests and console errors in the network tab.",
         "Test it on a slow connection and with a keyboard only; both reveal problems early.",
         "You can do this without {c} by relying on built-in browser features."],
        ["Can you add TypeScript types to that?", "How would I test this component?",
         "How do I make it accessible to screen readers?"],
        ["Here is the same code with explicit types for the props and the returned data.",
         "A component test renders it, simulates the user action and checks what appears on screen.",
         "Use semantic elements and aria labels so screen readers announce each control."],
    ),
    "cooking_recipes": _t(
        ["Give me a recipe for {a} that uses {b}.", "How do I cook {a} if I only have {b} in the kitchen?",
         "I'm hosting {c} tonight. What {a} can I make with {b}?",
         "Suggest a simple {a} recipe with {b} for {c}."],
        {"a": ["a weeknight curry", "banana bread", "a lentil soup", "homemade pizza dough", "a stir fry",
               "a vegetable lasagna", "overnight oats", "a mushroom risotto", "fish tacos", "a chickpea salad",
               "pancakes", "a roast chicken", "a chocolate cake", "a vegetable frittata"],
         "b": ["chickpeas and spinach", "ripe bananas", "a slow cooker", "whole wheat flour", "leftover rice",
               "frozen vegetables", "canned tomatoes", "an air fryer", "no eggs", "oat milk", "a cast iron pan",
               "coconut milk"],
         "c": ["four friends", "my kids", "a vegetarian guest", "a dinner party", "meal prep for the week",
               "a picnic", "two people"]},
        ["For {a} with {b}, start by preparing all the ingredients so the cooking goes smoothly.",
         "Season in small steps and taste as you go; salt and acid make the biggest difference.",
         "Cook it on medium heat and stir occasionally so nothing sticks to the pan.",
         "This version works well for {c} and takes about forty minutes from start to finish.",
         "You can swap the main vegetable for whatever is in season without changing the method."],
        ["Can you make it vegan?", "How long will the leftovers keep in the fridge?",
         "Can I freeze it?"],
        ["Replace the dairy with a plant milk and the eggs with a flax mixture; the texture stays close.",
         "Leftovers keep three to four days in a sealed container in the fridge.",
         "It freezes well for up to three months; thaw it overnight before reheating."],
    ),
    "travel_planning": _t(
        ["Plan a {a} itinerary for {b} on a {c} budget.", "What should I see on a {a} trip to {b}?",
         "I'm visiting {b} for a {a} trip with a {c} budget. Any tips?",
         "Help me plan a {a} visit to {b} that fits a {c} budget."],
        {"a": ["three-day", "one-week", "long weekend", "ten-day", "two-week", "five-day", "day", "family"],
         "b": ["Lisbon", "Kyoto", "the Scottish Highlands", "Mexico City", "Iceland's ring road", "Vancouver",
               "the Amalfi Coast", "Marrakech", "Seoul", "Patagonia", "Prague", "New Orleans", "Cape Town",
               "Hanoi", "the Norwegian fjords"],
         "c": ["modest", "tight", "mid-range", "flexible", "backpacker", "generous"]},
        ["For a {a} trip to {b}, group the sights by neighbourhood so you are not crossing town every day.",
         "Book the most popular attractions ahead, and leave one afternoon free for wandering.",
         "Local markets and free walking tours stretch a {c} budget a long way.",
         "Public transport passes usually pay off after two or three rides a day.",
         "Check the weather for the season; it changes what you can comfortably do."],
        ["Which neighbourhood is best to stay in?", "How do I get around without renting a car?",
         "Is it safe to travel there alone?"],
        ["Stay somewhere central and near a transit line; it saves time every single day.",
         "Trains and buses cover the main routes, and a day pass keeps costs predictable.",
         "Solo travellers do fine with the usual care: keep valuables close and share your plans."],
    ),
    "fitness_training": _t(
        ["Design a {a} workout plan for someone who wants to {b}.",
         "I want to {b}. What {a} routine do you recommend for {c}?",
         "Give me a {a} program to {b}; I am {c}.",
         "How should {c} structure a {a} plan to {b}?"],
        {"a": ["four-week", "home", "beginner strength", "twice-weekly", "eight-week", "gym", "bodyweight",
               "low impact", "twenty-minute", "progressive"],
         "b": ["run a first 10k", "build upper body strength", "improve flexibility", "lose some weight",
               "do ten pull-ups", "improve posture", "get back in shape after an injury", "swim a mile",
               "train for a hiking trip", "increase my squat"],
         "c": ["a complete beginner", "a busy parent", "someone over fifty", "a student", "an office worker",
               "a former athlete"]},
        ["A {a} plan to {b} should raise the load gradually, about ten percent a week.",
         "Alternate harder and easier days so your body has time to recover.",
         "Warm up for five to ten minutes and keep the first sessions deliberately easy.",
         "For {c}, consistency matters far more than intensity in the first month.",
         "Track each session in a notebook so you can see progress and adjust."],
        ["How should I adjust it if my knees hurt?", "What should I eat before training?",
         "How many rest days do I need?"],
        ["Swap running and jumping for cycling or swimming until the knees settle, and see a physio if it persists.",
         "A light meal with carbohydrates an hour or two before training works for most people.",
         "Two full rest days a week is a good default; sleep is where the adaptation happens."],
    ),
    "personal_finance": _t(
        ["How should I {a} if I earn {b}?", "Explain how to {a} on an income of {b}.",
         "I'm {c} and I earn {b}. What's the best way to {a}?",
         "What steps should {c} take to {a} with {b}?"],
        {"a": ["build an emergency fund", "start investing for retirement", "pay off credit card debt",
               "save for a house deposit", "create a monthly budget", "choose between renting and buying",
               "plan for a baby", "reduce my tax bill", "invest a small inheritance", "save for a wedding"],
         "b": ["a modest monthly salary", "an irregular freelance income", "two part-time jobs",
               "a teacher's salary", "a graduate salary", "a pension", "commission-based pay",
               "a seasonal income"],
         "c": ["a single parent", "in my twenties", "close to retirement", "a recent immigrant",
               "a couple with one income", "self-employed"]},
        ["With {b}, start by listing fixed costs and setting aside a small amount automatically each month.",
         "Pay off the highest interest debt first while making minimum payments on the rest.",
         "An emergency fund of three to six months of expenses protects you from new debt.",
         "Low-cost index funds are a sensible default for long-term investing.",
         "This is general information rather than personal advice; a fee-only adviser can look at your details."],
        ["What if I also have student loans?", "Should I use an index fund for this?",
         "How much should I keep in cash?"],
        ["Keep paying the student loans on schedule unless their rate is higher than what you expect to earn.",
         "A broad index fund spreads the risk and keeps fees low, which matters over decades.",
         "Keep enough cash for emergencies and near-term goals; invest the rest for the long run."],
    ),
    "creative_writing": _t(
        ["Write a short story about {a} set in {b}.", "Write a poem about {a}, set in {b}, in a {c} tone.",
         "Give me an opening paragraph for a {c} novel about {a} in {b}.",
         "Compose a {c} fable about {a} that takes place in {b}."],
        {"a": ["a lighthouse keeper who finds a message", "a robot learning to paint", "two rival bakers",
               "a lost dog finding its way home", "a grandmother's secret recipe", "a time traveller's regret",
               "a librarian who can hear books", "a chess match that lasts a lifetime", "the last tree in a city",
               "a letter that arrives fifty years late", "an astronaut's first day home", "a river that runs backwards"],
         "b": ["a stormy coastal village", "a city on Mars", "a medieval market town", "a snowy mountain pass",
               "a night train across Europe", "a floating island", "a small desert town", "an underwater station",
               "a busy hospital ward", "a forgotten amusement park"],
         "c": ["hopeful", "melancholy", "funny", "eerie", "whimsical", "bittersweet", "tense"]},
        ["Here is a {c} piece about {a}, set in {b}.",
         "The opening lines establish the setting before the main character appears.",
         "I kept the language simple and let the imagery carry the mood.",
         "The ending leaves a small question open for the reader.",
         "The central image returns at the end to tie the piece together."],
        ["Make the ending more surprising.", "Rewrite it for a young audience.",
         "Give the main character a name and a backstory."],
        ["Here is a new ending with a twist that recasts the opening lines.",
         "This version uses shorter sentences and gentler themes for younger readers.",
         "I gave the character a name and a short history that explains their choices."],
    ),
    "email_drafting": _t(
        ["Draft a {c} email to {a} about {b}.", "Help me write an email to {a} regarding {b}.",
         "Can you write a {c} message to {a} explaining {b}?",
         "I need to email {a} about {b}. Keep it {c}."],
        {"a": ["my landlord", "a client", "my manager", "a supplier", "my child's teacher", "a recruiter",
               "the HR department", "a new colleague", "my bank", "a conference organiser", "a contractor"],
         "b": ["a late payment", "a broken heater", "rescheduling our meeting", "a request for a deadline extension",
               "a refund for a damaged order", "declining a job offer", "a salary negotiation", "a missed delivery",
               "a noisy neighbour", "a project delay", "a thank you after an interview"],
         "c": ["polite", "firm", "friendly", "formal", "brief", "apologetic"]},
        ["Here is a {c} draft to {a}; the subject line states the purpose in a few words.",
         "The first sentence explains why you are writing about {b}.",
         "The middle gives the key facts and dates so the reader does not need to ask.",
         "It ends with a clear request and the next step you expect.",
         "Replace the placeholders in brackets with your own details before sending."],
        ["Make it shorter and more direct.", "Can you make the tone a little warmer?",
         "Can you write a subject line too?"],
        ["Here is a shorter version that keeps the request and the deadline.",
         "I softened the opening and added a thank you at the end.",
         "The subject line now names the issue and the date."],
    ),
    "math_homework": _t(
        ["Solve {a} and explain {b}.", "Can you help me with {a}? Please explain {b}.",
         "I'm stuck on {a} in my {c} class. Can you explain {b}?",
         "Walk me through {a} for {c}, explaining {b}."],
        {"a": ["the equation 3x + 7 = 22", "the integral of x times sine x", "a probability question about two dice",
               "the area of a triangle with sides 5, 12 and 13", "the derivative of e to the x squared",
               "a system of two linear equations", "the limit of sin x over x", "a compound interest problem",
               "the volume of a cone", "a proof by induction", "the eigenvalues of a two by two matrix",
               "a quadratic with complex roots"],
         "b": ["each step", "why the method works", "the intuition behind it", "common mistakes",
               "how to check the answer", "a faster method"],
         "c": ["algebra", "calculus", "statistics", "geometry", "linear algebra", "high school maths"]},
        ["Let's solve {a} one step at a time.", "First write down what is given and what is asked.",
         "Apply the rule to each term, keeping track of signs.", "Substituting the answer back in confirms it is correct.",
         "The key idea in {c} here is to reduce the problem to one you already know how to solve."],
        ["Can you check my answer of 42?", "Give me a similar practice problem.",
         "Is there a graphical way to see this?"],
        ["Your answer is close; the slip is in the second step, where a sign changes.",
         "Here is a similar problem with different numbers; try it before looking at the solution.",
         "A quick sketch of the graph shows the same result and helps build intuition."],
    ),
    "career_advice": _t(
        ["How do I prepare for {a} as {b}?", "I am {b}. Give me advice on {a}.",
         "As {b} in {c}, how should I approach {a}?",
         "What should {b} know about {a} in {c}?"],
        {"a": ["a product manager interview", "asking for a raise", "changing careers into data science",
               "my first performance review", "negotiating a job offer", "a behavioural interview",
               "building a portfolio", "finding a mentor", "returning to work after parental leave",
               "moving into management", "a technical phone screen"],
         "b": ["a recent graduate", "a mid-career teacher", "a self-taught developer", "a nurse",
               "an accountant", "a career changer in my forties", "an international student"],
         "c": ["a startup", "a large company", "the public sector", "a remote team", "healthcare",
               "finance"]},
        ["For {a}, prepare three concrete stories that show the impact of your work.",
         "Research the organisation and tailor your examples to what they care about.",
         "As {b}, frame your background as an advantage rather than a gap.",
         "Practise out loud with a friend; it makes the real conversation much calmer.",
         "Follow up within a day with a short thank you note."],
        ["What questions should I ask the interviewer?", "How do I explain a gap in my resume?",
         "How do I answer the salary expectations question?"],
        ["Ask about how success is measured in the first six months and how the team works.",
         "Explain the gap briefly and honestly, then move to what you learned or did in that time.",
         "Give a researched range and say you are flexible depending on the whole package."],
    ),
    "language_learning": _t(
        ["How do I say {a} in {b}?", "Translate {a} into {b} and explain the grammar.",
         "What's the {c} way to say {a} in {b}?",
         "I'm learning {b}. How would I say {a} in a {c} way?"],
        {"a": ["'where is the train station'", "'I would like to book a table for two'", "'nice to meet you'",
               "'could you speak more slowly'", "'I am allergic to nuts'", "'how much does this cost'",
               "'I have been learning for a year'", "'see you next week'", "'I missed my connection'",
               "'the bill, please'"],
         "b": ["Spanish", "Japanese", "German", "Portuguese", "French", "Italian", "Korean", "Mandarin",
               "Dutch", "Turkish"],
         "c": ["polite", "casual", "formal", "natural"]},
        ["In {b}, the {c} version of {a} changes the verb form to match who you are speaking to.",
         "Word order differs from English, so the verb may move to the end of the sentence.",
         "Listen for how native speakers shorten it in everyday speech.",
         "Here is the phrase with a literal word by word gloss underneath."],
        ["How would I say it more formally?", "Can you give me three example sentences?",
         "Is there a common mistake learners make with this?"],
        ["The formal version uses the polite pronoun and a longer verb ending.",
         "Here are three example sentences, from casual to formal, with translations.",
         "Learners often translate word for word; the natural phrasing drops the pronoun."],
    ),
    "home_gardening": _t(
        ["Why are my {a} {b}?", "What should I do about {a} that are {b} on {c}?",
         "My {a} on {c} have been {b} for two weeks. How do I save them?",
         "Any tips for {a} that keep {b}? They live on {c}."],
        {"a": ["tomato plants", "basil seedlings", "houseplants", "rose bushes", "cucumbers", "succulents",
               "orchids", "strawberry plants", "lemon trees", "peppers", "ferns", "hydrangeas"],
         "b": ["turning yellow", "wilting in the afternoon", "covered in small white bugs", "not flowering",
               "dropping leaves", "growing leggy", "getting brown tips", "rotting at the base"],
         "c": ["a shady balcony", "a sunny patio", "a windowsill", "a clay soil allotment", "a north-facing window sill",
               "a rooftop terrace", "a raised bed"]},
        ["{a} that are {b} are usually telling you about water, light or roots.",
         "Check the soil a finger deep; water only when it is dry at that depth.",
         "Move them to brighter light gradually so the leaves do not scorch.",
         "Remove the worst affected leaves so the plant puts energy into new growth.",
         "A balanced fertiliser every few weeks in the growing season helps recovery."],
        ["Is it safe to use neem oil?", "When is the best time to repot them?",
         "How often should I water them?"],
        ["Neem oil is safe when diluted; spray in the evening and test a single leaf first.",
         "Repot in spring, when the roots start circling the pot, into a pot one size larger.",
         "Water deeply and less often; shallow daily watering encourages weak roots."],
    ),
    "science_explainers": _t(
        ["Explain {a} in simple terms for {b}.", "How does {a} work? Explain it to {b}.",
         "Can you explain {a} to {b} using {c}?",
         "What's the simplest way to describe {a} to {b}, maybe with {c}?"],
        {"a": ["photosynthesis", "how vaccines train the immune system", "black holes", "plate tectonics",
               "how batteries store energy", "quantum entanglement", "the greenhouse effect", "DNA replication",
               "how rainbows form", "natural selection", "nuclear fusion in the sun", "how the internet routes data",
               "the water cycle", "why the sky is blue"],
         "b": ["a ten-year-old", "a high school student", "someone with no science background",
               "my grandmother", "a curious teenager", "a history student"],
         "c": ["an everyday analogy", "a simple diagram", "a kitchen experiment", "a short story",
               "a sports metaphor"]},
        ["Think of {a} like this, using {c}.", "At its core it is about energy moving from one form to another.",
         "The scientists who studied it noticed a pattern and tested it carefully.",
         "Here is a one sentence version for {b}, followed by a slightly deeper one.",
         "A quick experiment at home can show the main idea."],
        ["Can you give a real-world example?", "What is a common misconception about it?",
         "How do we know this is true?"],
        ["A real-world example is something you can see every day once you know to look for it.",
         "A common misconception is that it happens all at once; in fact it is gradual.",
         "We know from repeated measurements that agree with the predictions."],
    ),
    "legal_questions": _t(
        ["What are my rights as {a} if {b}?", "As {a}, what can I do when {b}?",
         "I'm {a} in {c} and {b}. What are my options?",
         "Where do I stand as {a} if {b} in {c}?"],
        {"a": ["a tenant", "a freelancer", "an employee", "a small business owner", "a landlord", "a consumer",
               "a contractor", "a student"],
         "b": ["the deposit is not returned", "a client refuses to pay an invoice", "my contract is terminated early",
               "a product I bought is faulty", "my employer cuts my hours", "someone copies my photos",
               "the landlord enters without notice", "a supplier misses a delivery date", "I am asked to work unpaid overtime"],
         "c": ["the UK", "California", "Ontario", "Germany", "Australia", "New York", "Ireland"]},
        ["As {a}, you generally have rights when {b}, but the details depend on the law in {c}.",
         "Keep copies of the contract, messages and receipts; they are your evidence.",
         "Start with a written request that sets a reasonable deadline.",
         "Free advice services and small claims procedures exist for disputes like this.",
         "This is general information, not legal advice; a local lawyer can confirm your position."],
        ["Do I need a lawyer for this?", "What documents should I keep?",
         "How long do I have to file a claim?"],
        ["For small amounts a lawyer is often not needed; small claims procedures are designed for individuals.",
         "Keep the contract, invoices, photos and every message, with dates.",
         "Time limits vary by claim and place; check them early so you do not miss one."],
    ),
    "mental_wellbeing": _t(
        ["How can I cope with {a} when {b}?", "I've been struggling with {a} since {b}. Any advice?",
         "What are some {c} ways to deal with {a}?",
         "Suggest {c} strategies for {a} while {b}."],
        {"a": ["stress at work", "trouble sleeping", "feeling lonely", "exam anxiety", "burnout",
               "procrastination", "low motivation", "social anxiety", "grief", "overthinking at night"],
         "b": ["I started a new job", "I moved to a new city", "the baby arrived", "my exams started",
               "I began working from home", "a relationship ended", "I retired"],
         "c": ["practical", "gentle", "science-based", "quick", "daily"]},
        ["It is very common to feel {a}, and noticing it is already a useful first step.",
         "Small routines help: regular sleep, short walks and meals at similar times.",
         "Try writing down worries for ten minutes in the evening, then closing the notebook.",
         "Talking to someone you trust often makes things feel more manageable.",
         "If it persists or feels overwhelming, a doctor or counsellor can help; you do not have to manage alone."],
        ["What if that doesn't help?", "Can you suggest a short breathing exercise?",
         "How do I talk to my family about it?"],
        ["If it does not help after a few weeks, it is worth talking to a professional.",
         "Try breathing in for four counts, holding for four and breathing out for six, a few times.",
         "Choose a calm moment and describe how you feel rather than what they should do."],
    ),
    "pet_care": _t(
        ["My {a} keeps {b}. What should I do?", "Why does my {a} keep {b}?",
         "How do I stop my {c} {a} from {b}?",
         "Is it normal for a {c} {a} to keep {b}?"],
        {"a": ["dog", "cat", "rabbit", "parrot", "hamster", "puppy", "kitten", "guinea pig"],
         "b": ["scratching the furniture", "barking at night", "refusing to eat", "pulling on the lead",
               "hiding under the bed", "chewing cables", "drinking a lot of water", "waking me up early",
               "biting during play", "losing fur"],
         "c": ["rescue", "young", "senior", "indoor", "newly adopted", "anxious"]},
        ["A {c} {a} that keeps {b} is often bored, anxious or uncomfortable.",
         "More exercise and play earlier in the day usually reduces unwanted behaviour.",
         "Reward the behaviour you want immediately, and ignore the rest where it is safe.",
         "Sudden changes in eating or drinking are worth a call to the vet.",
         "Give them a quiet space of their own where they are never disturbed."],
        ["How long will training take?", "Should I see a vet first?",
         "What toys would help?"],
        ["Most habits change within a few weeks of consistent daily practice.",
         "Yes, rule out pain or illness first, especially if the change was sudden.",
         "Puzzle feeders and chew toys give them something better to do."],
    ),
}

_GREETINGS = ("", "", "", "", "Hi! ", "Hello. ", "Hey there. ", "Good morning. ")
_CONTEXT = ("", "", "", " I've already searched online but the answers conflict.", " This is my first time asking.",
            " I'd appreciate a clear explanation.", " Please keep it short.", " Thanks in advance!")
_OPENERS = ("", "", "Good question. ", "Sure. ", "Happy to help. ", "Let's work through it. ")
_CLOSERS = ("", "", " Let me know if you want more detail.", " Tell me how it goes.",
            " I can expand on any of these points.")


_AN = re.compile(r"\b([Aa]) (?=[aeioAEIO](?!ne\b))")


def _fill(template: str, values: dict[str, str]) -> str:
    text = _AN.sub(r"\1n ", template.format(**values))
    return text[:1].upper() + text[1:]


def demo_conversations(n: int = 320, seed: int = 7) -> list[Conversation]:
    """``n`` conversations spread evenly over the demo topics, the same for the same ``(n, seed)``."""
    rng = random.Random(seed)
    names = sorted(TOPICS)
    start = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
    out = []
    for i in range(n):
        name = names[i % len(names)]
        topic = TOPICS[name]
        template = rng.randrange(len(topic.requests))
        values = {slot: rng.choice(options) for slot, options in topic.slots.items()}
        request = rng.choice(_GREETINGS) + _fill(topic.requests[template], values) + rng.choice(_CONTEXT)
        answer = " ".join(_fill(s, values) for s in (topic.answers[0], *rng.sample(topic.answers[1:], 2)))
        created = start + timedelta(minutes=37 * i + rng.randrange(30))
        messages = [
            Message(created_at=created, role="user", content=request),
            Message(created_at=created + timedelta(seconds=20 + rng.randrange(40)), role="assistant",
                    content=rng.choice(_OPENERS) + answer + rng.choice(_CLOSERS)),
        ]
        turns = rng.choice((1, 2, 2, 3))
        for f in rng.sample(range(len(topic.follow_ups)), turns - 1):
            at = messages[-1].created_at + timedelta(minutes=1 + rng.randrange(3), seconds=rng.randrange(60))
            messages.append(Message(created_at=at, role="user", content=topic.follow_ups[f]))
            messages.append(Message(created_at=at + timedelta(seconds=15 + rng.randrange(30)), role="assistant",
                                    content=topic.follow_answers[f] + rng.choice(_CLOSERS)))
        out.append(Conversation(
            chat_id=f"demo-{i:05d}",
            created_at=created,
            messages=messages,
            metadata={"source": "kura-dagster-demo", "demo_topic": name, "template": template,
                      "user_rating": rng.choice((3, 4, 4, 5)), "flagged": rng.random() < 0.05},
        ))
    return out
