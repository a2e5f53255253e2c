"""Labelled corpora of four shapes for ``benchmarks/quality.py`` and ``test_offline_language.py`` (issue 18).

Each generator returns ``(conversations, labels)``: the label is what the user asked for, which is what a
person reading the clusters wants them to follow. The shapes are the ones real logs have and the demo data
lacks, and their subjects (hobbies, crafts, trades) are deliberately far from the demo generator's topics
and from anything the package's code mentions, so nothing in the pipeline can have been tuned to them:

* ``rag``: a retrieval-augmented prompt template (instructions, three retrieved passages of which one or two
  are off-topic, then the question); the assistant answers from the context.
* ``code``: multi-turn debugging and review chats whose first message pastes 40-120 lines of code in one
  of four programming languages (the language is independent of the request), with follow-ups.
* ``multilingual``: the same requests asked natively in English, Spanish, French, German, Portuguese and
  Italian; the label is the request *and* the language (a cluster should not mix either).
* ``roleplay``: system-like prompts that start with "You are …" (a persona, rules, then the ask), the
  shape that made the old summaries read "The user asked the assistant to you are …".

Deterministic for a seed; ``random.Random`` only.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

from kura_dagster.types import Conversation, Message

_T0 = datetime(2026, 3, 1, 9, 30, tzinfo=timezone(timedelta(hours=-5)))


def _conversation(chat_id: str, turns: list[tuple[str, str]], i: int, label: str) -> Conversation:
    t = _T0 + timedelta(minutes=7 * i)
    return Conversation(
        chat_id=chat_id, created_at=t,
        messages=[Message(created_at=t + timedelta(seconds=20 * j), role=r, content=c) for j, (r, c) in enumerate(turns)],
        metadata={"label": label},
    )


# --- RAG -------------------------------------------------------------------------------------------------

_RAG_INTENTS: dict[str, dict] = {
    "beehive swarm prevention": {
        "q": ["How can {p} stop a strong colony from swarming in {m}?",
              "What is the best way to prevent swarming when the brood box is full of queen cells?",
              "Should {p} split the hive or add a super to avoid a swarm this {m}?"],
        "doc": "Swarming happens when a colony is congested; inspect frames weekly for queen cups, add supers "
               "early and consider an artificial split with the old queen moved to a nucleus box.",
    },
    "varroa mite treatment": {
        "q": ["When should {p} treat the hives for varroa mites with oxalic acid?",
              "How do I count mites with a sugar roll and decide whether to treat?",
              "Is formic acid safe for varroa treatment while honey supers are on in {m}?"],
        "doc": "Varroa loads are measured with an alcohol wash or sugar roll of 300 bees; treat above three mites "
               "per hundred bees, using oxalic acid dribble in broodless periods or formic acid strips.",
    },
    "kiln firing schedule": {
        "q": ["What firing schedule should {p} use for a cone 6 glaze load in an electric kiln?",
              "How slow should the kiln ramp be through quartz inversion for thick stoneware?",
              "Can you give me a bisque firing schedule for greenware that is still a bit damp?"],
        "doc": "A cone 6 glaze firing ramps 150 degrees per hour to 1000, then 300 per hour to peak, with a ten "
               "minute hold; bisque loads candle overnight so damp greenware does not crack.",
    },
    "glaze crawling and pinholes": {
        "q": ["Why does my glaze crawl and leave bare patches on the pot?",
              "How can {p} fix pinholes in a glossy celadon glaze?",
              "What causes glaze to bead up and crawl near the rim after firing?"],
        "doc": "Crawling comes from dusty or oily bisque and glazes applied too thick; pinholes come from gas "
               "escaping the clay body, cured by a slower cooling segment and a clean bisque.",
    },
    "telescope collimation": {
        "q": ["How do I collimate a Newtonian reflector with a laser collimator?",
              "Why are the stars in my dobsonian blurry and shaped like a comet even after focusing?",
              "What is the right order to adjust the secondary and primary mirror screws?"],
        "doc": "Collimation aligns the secondary mirror under the focuser first, then the primary mirror's "
               "tilt screws until the laser returns to its centre; star test at high magnification.",
    },
    "tubeless tyre sealant": {
        "q": ["How much sealant should {p} put in a tubeless gravel tyre?",
              "My tubeless tyre will not seat on the rim bead, what should I try?",
              "How often does tyre sealant need topping up in {m}?"],
        "doc": "Use 40 to 60 ml of latex sealant per gravel tyre, seat the bead with a burst of air from a "
               "booster, and top up every two to three months because sealant dries out.",
    },
    "sourdough starter care": {
        "q": ["Why is my sourdough starter not rising after {n} days of feeding?",
              "How should {p} feed a rye starter kept in the fridge?",
              "What ratio of flour and water keeps a starter lively in a cold kitchen?"],
        "doc": "A young starter needs daily feeding at 1:1:1 starter, flour and water; rye flour and a warm "
               "spot near 26 degrees speed it up, and fridge starters are fed weekly.",
    },
    "violin bow rehair": {
        "q": ["How often should a violin bow be rehaired if {p} plays every day?",
              "Why does my bow lose hair and feel slippery even with fresh rosin?",
              "Is it worth rehairing an old pernambuco bow or buying a carbon one?"],
        "doc": "Bows played daily need rehairing every six to twelve months; slippery hair is worn or dirty, "
               "and pernambuco sticks are worth rehairing while carbon bows are sturdier.",
    },
    "anchoring in strong wind": {
        "q": ["How much anchor chain should {p} let out when gusts reach {n} knots?",
              "What is the best way to set an anchor in sand before a windy night?",
              "My boat keeps dragging anchor in a blow, what scope should I use?"],
        "doc": "In strong wind use a scope of seven to one with rope rode or five to one with all chain, back "
               "down slowly to set the anchor, and add a snubber to reduce shock loads.",
    },
    "genealogy census records": {
        "q": ["Where can {p} find the 1921 census entry for a great grandmother?",
              "How do I trace an ancestor who changed the spelling of the surname between censuses?",
              "What should I do when a census record gives a different birth year than the baptism?"],
        "doc": "Census transcriptions vary in spelling; search with wildcards, compare ages across decades and "
               "confirm with parish baptism registers, which are usually more accurate.",
    },
    "knitting gauge swatch": {
        "q": ["Why is my knitting gauge swatch bigger than the pattern says?",
              "How should {p} block a swatch before measuring stitches per inch?",
              "Do I need to go down a needle size if my gauge is too loose?"],
        "doc": "Knit a swatch at least 15 cm wide, wash and block it as the finished garment will be, then "
               "count stitches over 10 cm; loose gauge means a smaller needle.",
    },
    "aquarium nitrogen cycle": {
        "q": ["How long does it take to cycle a new {n} litre aquarium without fish?",
              "My ammonia reading is stuck at 2 ppm, is the tank cycle stalled?",
              "When can {p} add the first shrimp to a freshly cycled planted tank?"],
        "doc": "Fishless cycling takes four to six weeks: dose ammonia, wait for nitrite to appear and fall, "
               "and add livestock once ammonia and nitrite read zero within 24 hours.",
    },
}
_PEOPLE = ["I", "we", "my club", "a beginner", "my partner", "our group"]
_MONTHS = ["spring", "May", "early summer", "autumn", "winter", "the rainy season"]
_RAG_TEMPLATES = [
    "Answer the question using only the context below. If the context does not contain the answer, say so.\n\n"
    "Context:\n{ctx}\n\nQuestion: {q}\nAnswer:",
    "### Instructions\nYou are a support bot for a hobby forum. Cite the passage you used.\n\n### Retrieved passages\n"
    "{ctx}\n\n### User question\n{q}",
    "<context>\n{ctx}\n</context>\n\nUsing the context, reply to this member's question in two paragraphs: {q}",
]


def _fill(rng: random.Random, text: str) -> str:
    return text.format(p=rng.choice(_PEOPLE), m=rng.choice(_MONTHS), n=rng.choice([3, 5, 9, 12, 20, 35, 60, 120]))


def rag_corpus(n: int = 480, seed: int = 0) -> tuple[list[Conversation], list[str]]:
    rng = random.Random(seed)
    intents = sorted(_RAG_INTENTS)
    convs, labels = [], []
    for i in range(n):
        label = intents[i % len(intents)]
        spec = _RAG_INTENTS[label]
        others = rng.sample([x for x in intents if x != label], 2)
        passages = [spec["doc"], *(_RAG_INTENTS[o]["doc"] for o in others[: rng.randint(1, 2)])]
        rng.shuffle(passages)
        ctx = "\n\n".join(f"[{j + 1}] (source: forum-wiki/page-{rng.randint(100, 999)})\n{p}" for j, p in enumerate(passages))
        q = _fill(rng, rng.choice(spec["q"]))
        prompt = rng.choice(_RAG_TEMPLATES).format(ctx=ctx, q=q)
        answer = f"According to passage [1], {spec['doc'][0].lower()}{spec['doc'][1:]}"
        turns = [("user", prompt), ("assistant", answer)]
        if rng.random() < 0.3:
            turns += [("user", "Thanks. Is there anything else I should watch out for?"),
                      ("assistant", "Keep notes of what you tried and check again in a week.")]
        convs.append(_conversation(f"rag-{i:05d}", turns, i, label))
        labels.append(label)
    return convs, labels


# --- multi-turn with long pasted code ------------------------------------------------------------------

_CODE_INTENTS: dict[str, list[str]] = {
    "off-by-one in pagination": ["The pagination below skips the last page of results. Where is the off-by-one?",
                                 "Why does this paginate function return one page too few when the total is exact?",
                                 "Last page of items never shows up with this paging loop, can you find the bug?"],
    "flaky date parsing": ["Parsing the timestamps below fails on dates with a timezone offset. How do I fix the parsing?",
                           "This date parser breaks for strings like 2024-03-01T10:00+02:00, what is wrong?",
                           "Dates shift by one day after parsing in this code, is it a timezone bug?"],
    "slow nested loop": ["This nested loop takes minutes on 50k rows. How can I make it faster?",
                         "Can you speed up the quadratic loop below? It compares every pair of records.",
                         "Profiling shows most of the time in this double loop, how would you optimise it?"],
    "retry with backoff": ["Add retry with exponential backoff to the HTTP call below.",
                           "How should I retry this request on timeouts with jittered backoff?",
                           "The download below fails on flaky networks, please wrap it in retries with backoff."],
    "unit tests for parser": ["Write unit tests for the tokenizer below, including edge cases.",
                              "Can you write a test suite covering the tokenizer's empty and malformed input?",
                              "I need tests for this tokenizer before refactoring it, what cases should they cover?"],
    "memory leak in listeners": ["Memory keeps growing when this widget is opened and closed. Is there a listener leak?",
                                 "Heap snapshots show listeners piling up with the code below, how do I release them?",
                                 "Why is memory never freed after the panel below is destroyed?"],
    "race condition in cache": ["Two workers sometimes write the cache below at once and corrupt it. How do I lock it?",
                                "Is there a race condition in this cache refresh when threads overlap?",
                                "Concurrent updates to this cache lose entries, how can I make it thread safe?"],
    "refactor into classes": ["Refactor the script below into small classes with clear responsibilities.",
                              "This script is one long function; how would you split it into classes?",
                              "Please restructure the code below into an object oriented design."],
}
_FOLLOW_UPS = ["That helped, but now it fails with a KeyError on the second run.",
               "Can you explain why your version is correct?",
               "It works now. Could you also add type hints?",
               "Still seeing the same problem on the staging box, any other idea?"]
_IDENTS = ["order", "ledger", "parcel", "sensor", "ticket", "invoice", "batch", "record", "node", "queue", "shelf",
           "crate", "route", "stamp", "glyph", "token", "frame", "slot", "bucket", "item"]


def _code_block(rng: random.Random, language: str, lines: int) -> str:
    a, b, c = rng.sample(_IDENTS, 3)
    body = []
    for j in range(lines):
        x, y = rng.sample(_IDENTS, 2)
        if language == "python":
            body.append(rng.choice([f"    {x}_{j} = {y}s[{j % 7}] + offset", f"    if {x}.{y}_id > limit:",
                                    f"        result.append({x}.{y})", f"    for {x} in {y}s:", "    total += 1"]))
        elif language == "javascript":
            body.append(rng.choice([f"  const {x}{j} = {y}s[{j % 7}] + offset;", f"  if ({x}.{y}Id > limit) {{",
                                    f"    result.push({x}.{y});", "  }", f"  for (const {x} of {y}s) {{"]))
        elif language == "go":
            body.append(rng.choice([f"\t{x}{j} := {y}s[{j % 7}] + offset", f"\tif {x}.{y.title()}ID > limit {{",
                                    f"\t\tresult = append(result, {x}.{y.title()})", "\t}", f"\tfor _, {x} := range {y}s {{"]))
        else:
            body.append(rng.choice([f"    let {x}_{j} = {y}s[{j % 7}] + offset;", f"    if {x}.{y}_id > limit {{",
                                    f"        result.push({x}.{y}.clone());", "    }", f"    for {x} in {y}s.iter() {{"]))
    head = {"python": f"def process_{a}s({b}s, offset, limit):\n    result = []\n    total = 0",
            "javascript": f"function process{a.title()}s({b}s, offset, limit) {{\n  const result = [];",
            "go": f"func process{a.title()}s({b}s []{c.title()}, offset, limit int) []{c.title()} {{\n\tresult := nil",
            "rust": f"fn process_{a}s({b}s: &[{c.title()}], offset: i64, limit: i64) -> Vec<{c.title()}> {{\n"
                    f"    let mut result = Vec::new();"}[language]
    tail = {"python": "    return result", "javascript": "  return result;\n}", "go": "\treturn result\n}",
            "rust": "    result\n}"}[language]
    return f"```{language}\n{head}\n" + "\n".join(body) + f"\n{tail}\n```"


def code_corpus(n: int = 400, seed: int = 1) -> tuple[list[Conversation], list[str]]:
    rng = random.Random(seed)
    intents = sorted(_CODE_INTENTS)
    convs, labels = [], []
    for i in range(n):
        label = intents[i % len(intents)]
        ask = rng.choice(_CODE_INTENTS[label])
        code = _code_block(rng, rng.choice(["python", "javascript", "go", "rust"]), rng.randint(40, 120))
        first = f"{ask}\n\n{code}" if rng.random() < 0.6 else f"{code}\n\n{ask}"
        turns = [("user", first), ("assistant", "Here is a corrected version with the change explained below.\n\n"
                                                 + code.replace("offset", "start")[:1500])]
        for _ in range(rng.randint(0, 2)):
            turns += [("user", rng.choice(_FOLLOW_UPS)), ("assistant", "Good catch; adjust the loop as follows.")]
        convs.append(_conversation(f"code-{i:05d}", turns, i, label))
        labels.append(label)
    return convs, labels


# --- several languages ---------------------------------------------------------------------------------

_ML_INTENTS: dict[str, dict[str, list[str]]] = {
    "repot an orchid": {
        "en": ["How do I repot a phalaenopsis orchid whose roots are growing out of the pot?",
               "When is the right time to repot an orchid and which bark should I use?"],
        "es": ["¿Cómo trasplanto una orquídea phalaenopsis cuyas raíces salen de la maceta?",
               "¿Cuándo es el momento adecuado para trasplantar una orquídea y qué corteza debo usar?"],
        "fr": ["Comment rempoter une orchidée phalaenopsis dont les racines sortent du pot ?",
               "Quel est le bon moment pour rempoter une orchidée et quelle écorce faut-il utiliser ?"],
        "de": ["Wie topfe ich eine Phalaenopsis-Orchidee um, deren Wurzeln aus dem Topf wachsen?",
               "Wann ist der richtige Zeitpunkt, eine Orchidee umzutopfen, und welche Rinde soll ich nehmen?"],
        "pt": ["Como faço para replantar uma orquídea phalaenopsis com raízes saindo do vaso?",
               "Qual é a melhor época para replantar uma orquídea e que casca devo usar?"],
        "it": ["Come rinvaso un'orchidea phalaenopsis con le radici che escono dal vaso?",
               "Quando è il momento giusto per rinvasare un'orchidea e quale corteccia devo usare?"],
    },
    "train for a first marathon": {
        "en": ["Can you make a sixteen week plan to train for my first marathon?",
               "How many long runs per week should a beginner do before a marathon?"],
        "es": ["¿Puedes hacer un plan de dieciséis semanas para entrenar para mi primer maratón?",
               "¿Cuántas tiradas largas por semana debe hacer un principiante antes de un maratón?"],
        "fr": ["Peux-tu faire un plan de seize semaines pour préparer mon premier marathon ?",
               "Combien de sorties longues par semaine un débutant doit-il faire avant un marathon ?"],
        "de": ["Kannst du einen sechzehnwöchigen Trainingsplan für meinen ersten Marathon erstellen?",
               "Wie viele lange Läufe pro Woche sollte ein Anfänger vor einem Marathon machen?"],
        "pt": ["Você pode fazer um plano de dezesseis semanas para treinar para a minha primeira maratona?",
               "Quantos treinos longos por semana um iniciante deve fazer antes de uma maratona?"],
        "it": ["Puoi preparare un piano di sedici settimane per allenarmi alla mia prima maratona?",
               "Quante corse lunghe a settimana dovrebbe fare un principiante prima di una maratona?"],
    },
    "write a wedding toast": {
        "en": ["Help me write a funny wedding toast for my sister and her husband.",
               "I am the best man; can you draft a short, warm wedding speech?"],
        "es": ["Ayúdame a escribir un brindis de boda divertido para mi hermana y su marido.",
               "Soy el padrino; ¿puedes redactar un discurso de boda breve y cariñoso?"],
        "fr": ["Aide-moi à écrire un toast de mariage drôle pour ma sœur et son mari.",
               "Je suis le témoin ; peux-tu rédiger un discours de mariage court et chaleureux ?"],
        "de": ["Hilf mir, eine lustige Hochzeitsrede für meine Schwester und ihren Mann zu schreiben.",
               "Ich bin der Trauzeuge; kannst du eine kurze, herzliche Hochzeitsrede entwerfen?"],
        "pt": ["Me ajude a escrever um brinde de casamento engraçado para minha irmã e o marido dela.",
               "Sou o padrinho; você pode escrever um discurso de casamento curto e carinhoso?"],
        "it": ["Aiutami a scrivere un brindisi di nozze divertente per mia sorella e suo marito.",
               "Sono il testimone; puoi scrivere un discorso di nozze breve e affettuoso?"],
    },
    "remove a red wine stain": {
        "en": ["How do I get a red wine stain out of a white cotton tablecloth?",
               "What removes an old dried red wine stain from a carpet?"],
        "es": ["¿Cómo quito una mancha de vino tinto de un mantel blanco de algodón?",
               "¿Qué elimina una mancha seca de vino tinto de una alfombra?"],
        "fr": ["Comment enlever une tache de vin rouge sur une nappe blanche en coton ?",
               "Qu'est-ce qui enlève une vieille tache de vin rouge séchée sur un tapis ?"],
        "de": ["Wie bekomme ich einen Rotweinfleck aus einer weißen Baumwolltischdecke?",
               "Was entfernt einen alten, eingetrockneten Rotweinfleck aus einem Teppich?"],
        "pt": ["Como tiro uma mancha de vinho tinto de uma toalha de mesa branca de algodão?",
               "O que remove uma mancha seca de vinho tinto de um tapete?"],
        "it": ["Come tolgo una macchia di vino rosso da una tovaglia bianca di cotone?",
               "Cosa elimina una vecchia macchia di vino rosso secca da un tappeto?"],
    },
}
_ML_FOLLOW = {"en": "Thanks, and what should I avoid?", "es": "Gracias, ¿y qué debo evitar?",
              "fr": "Merci, et que dois-je éviter ?", "de": "Danke, und was sollte ich vermeiden?",
              "pt": "Obrigado, e o que devo evitar?", "it": "Grazie, e cosa devo evitare?"}


def multilingual_corpus(n: int = 480, seed: int = 2) -> tuple[list[Conversation], list[str]]:
    rng = random.Random(seed)
    keys = [(intent, lang) for intent in sorted(_ML_INTENTS) for lang in sorted(_ML_INTENTS[intent])]
    convs, labels = [], []
    for i in range(n):
        intent, lang = keys[i % len(keys)]
        turns = [("user", rng.choice(_ML_INTENTS[intent][lang])),
                 ("assistant", "1. " + intent + " — step one.\n2. Step two.")]
        if rng.random() < 0.4:
            turns += [("user", _ML_FOLLOW[lang]), ("assistant", "Avoid heat and harsh products.")]
        label = f"{intent} ({lang})"
        convs.append(_conversation(f"ml-{i:05d}", turns, i, label))
        labels.append(label)
    return convs, labels


# --- role-play and system-like prompts -----------------------------------------------------------------

_ROLES: dict[str, dict[str, list[str]]] = {
    "lighthouse keeper story": {
        "who": ["You are a weathered lighthouse keeper on a remote northern island in 1890.",
                "You are the last keeper of a storm-battered lighthouse, speaking in an old sailor's voice."],
        "ask": ["Tell me about the night the supply boat was lost in the fog.",
                "Describe your daily routine of trimming the lamp wicks and logging passing ships."],
    },
    "hiring manager mock interview": {
        "who": ["You are a hiring manager at a logistics firm interviewing me for a warehouse supervisor role.",
                "You are a strict interviewer for a supervisor position; ask one question at a time."],
        "ask": ["Start the mock interview with your first behavioural question.",
                "Interview me and give feedback on each of my answers."],
    },
    "chess coach opening lesson": {
        "who": ["You are a patient chess coach teaching a club player rated 1200.",
                "You are a grandmaster who explains chess openings with simple plans."],
        "ask": ["Teach me the main ideas of the Caro-Kann defence.",
                "Explain the plans behind the Queen's Gambit Declined for black."],
    },
    "dungeon master heist": {
        "who": ["You are the dungeon master of a fantasy heist campaign in a floating merchant city.",
                "You are a game master running a tabletop adventure about stealing a dragon's ledger."],
        "ask": ["Describe the vault entrance and ask my rogue what she does.",
                "Set the scene in the thieves' tavern and introduce the fence who hires us."],
    },
    "sommelier wine pairing": {
        "who": ["You are a sommelier at a small bistro who recommends wines by the glass.",
                "You are an expert sommelier; keep recommendations under fifty euros."],
        "ask": ["Which wine pairs with mushroom risotto and roast duck?",
                "Recommend a wine for grilled sardines and one for lamb tagine."],
    },
    "museum tour guide": {
        "who": ["You are a tour guide in a natural history museum leading a school group.",
                "You are an enthusiastic museum guide in the dinosaur hall."],
        "ask": ["Walk us through the fossil hall and the giant sloth skeleton.",
                "Explain to the children how the mammoth skeleton was found and assembled."],
    },
    "stoic philosopher dialogue": {
        "who": ["You are Marcus Aurelius answering questions in the style of the Meditations.",
                "You are a stoic philosopher of ancient Rome; answer with short maxims."],
        "ask": ["How should a person deal with an insult from a rival?",
                "What is the stoic view of fearing death and losing fame?"],
    },
    "customer complaint roleplay": {
        "who": ["You are an angry customer whose furniture delivery arrived with a broken table leg.",
                "You are a frustrated hotel guest whose room booking was cancelled; I am the front desk clerk."],
        "ask": ["Start the complaint call so I can practise calming you down.",
                "Play the customer and escalate if my apology sounds scripted."],
    },
}
_RULES = ["Stay in character no matter what.", "Never mention that you are an AI.", "Keep each reply under 120 words.",
          "Respond in the first person.", ""]


def roleplay_corpus(n: int = 400, seed: int = 3) -> tuple[list[Conversation], list[str]]:
    rng = random.Random(seed)
    roles = sorted(_ROLES)
    convs, labels = [], []
    for i in range(n):
        label = roles[i % len(roles)]
        spec = _ROLES[label]
        rules = " ".join(r for r in rng.sample(_RULES, 2) if r)
        prompt = f"{rng.choice(spec['who'])} {rules} {rng.choice(spec['ask'])}".replace("  ", " ")
        turns = [("user", prompt), ("assistant", "*clears throat* Well now, let me begin where it all started...")]
        if rng.random() < 0.5:
            turns += [("user", rng.choice(["Go on.", "What happens next?", "And then what did you do?"])),
                      ("assistant", "Then, as the bells rang, everything changed.")]
        convs.append(_conversation(f"rp-{i:05d}", turns, i, label))
        labels.append(label)
    return convs, labels


CORPORA = {"rag": rag_corpus, "code": code_corpus, "multilingual": multilingual_corpus, "roleplay": roleplay_corpus}
"""Name -> generator; each returns ``(conversations, labels)``."""
