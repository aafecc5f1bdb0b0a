"""Short factual questions and a pattern (case-insensitive regular expression) a right answer
contains: the conformance suite's answer-keeping check, and the first 30 of the tuning set of
``benchmarks/sweep.py`` (what recipes and defaults may be tuned on; the rest are in
``benchmarks/questions/tuning.json``). The evaluation set that
nothing is tuned on lives apart, in ``benchmarks/questions/eval.json``."""

QUESTIONS = (
    ("What is the capital of Italy?", r"\bRome\b"),
    ("What is the capital of Japan?", r"\bTokyo\b"),
    ("How many days are in a week?", r"\b(7|seven)\b"),
    ("What color is the sky on a clear day?", r"\bblue\b"),
    ("At what temperature in Celsius does water boil?", r"\b100\b"),
    ("Who wrote Romeo and Juliet?", r"Shakespeare"),
    ("What is the opposite of hot?", r"\bcold\b"),
    ("How many legs does a spider have?", r"\b(8|eight)\b"),
    ("What do bees make?", r"\bhoney\b"),
    ("What is the chemical symbol for gold?", r"\bAu\b"),
    ("What is the freezing point of water in Fahrenheit?", r"\b32\b"),
    ("Which planet is known as the Red Planet?", r"\bMars\b"),
    ("What is the capital of Germany?", r"\bBerlin\b"),
    ("What is the capital of Spain?", r"\bMadrid\b"),
    ("How many hours are in a day?", r"\b(24|twenty-four)\b"),
    ("What gas do plants absorb from the air?", r"carbon dioxide|\bCO2\b|CO₂"),
    ("What is the largest ocean on Earth?", r"\bPacific\b"),
    ("What is the boiling point of water in Fahrenheit?", r"\b212\b"),
    ("How many continents are there?", r"\b(7|seven)\b"),
    ("What color is grass?", r"\bgreen\b"),
    ("Who painted the Mona Lisa?", r"Leonardo|da Vinci"),
    ("What is the chemical formula for water?", r"H2O|H₂O"),
    ("How many months are in a year?", r"\b(12|twelve)\b"),
    ("Which animal is known as the king of the jungle?", r"\blions?\b"),
    ("What is the closest star to Earth?", r"\bSun\b"),
    ("What language is spoken in France?", r"\bFrench\b"),
    ("How many sides does a triangle have?", r"\b(3|three)\b"),
    ("What is the largest mammal?", r"\bwhales?\b"),
    ("What planet do we live on?", r"\bEarth\b"),
    ("What is the capital of Russia?", r"\bMoscow\b"),
)
