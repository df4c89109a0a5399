"""The chat-qa suite: short factual questions (written here) and arithmetic, unit and sequence questions
(generated, seeded). Items are only ever appended, so the first N (the demo's subset) stay the same."""

from __future__ import annotations

import random

FACTS: list[tuple[str, list[str]]] = [
    ("What is the capital of France?", ["Paris"]),
    ("What is the capital of Japan?", ["Tokyo"]),
    ("What is the capital of Italy?", ["Rome"]),
    ("What is the capital of Canada?", ["Ottawa"]),
    ("What is the capital of Australia?", ["Canberra"]),
    ("What is the capital of Germany?", ["Berlin"]),
    ("What is the capital of Spain?", ["Madrid"]),
    ("What is the capital of Egypt?", ["Cairo"]),
    ("What is the capital of Kenya?", ["Nairobi"]),
    ("What is the capital of Brazil?", ["Brasilia", "Brasília"]),
    ("What is the chemical symbol for gold?", ["Au"]),
    ("What is the chemical symbol for sodium?", ["Na"]),
    ("What is the chemical symbol for iron?", ["Fe"]),
    ("What is the chemical symbol for oxygen?", ["O"]),
    ("What gas do plants absorb from the air for photosynthesis?", ["carbon dioxide", "CO2"]),
    ("How many days are in a leap year?", ["366"]),
    ("How many continents are there?", ["7", "seven"]),
    ("How many sides does a hexagon have?", ["6", "six"]),
    ("How many legs does a spider have?", ["8", "eight"]),
    ("How many minutes are in an hour?", ["60", "sixty"]),
    ("How many bits are in a byte?", ["8", "eight"]),
    ("What is the largest planet in the Solar System?", ["Jupiter"]),
    ("Which planet is closest to the Sun?", ["Mercury"]),
    ("Which planet is known as the Red Planet?", ["Mars"]),
    ("What is the freezing point of water in degrees Celsius?", ["0", "zero"]),
    ("What is the boiling point of water at sea level in degrees Celsius?", ["100"]),
    ("Who wrote the play Romeo and Juliet?", ["William Shakespeare", "Shakespeare"]),
    ("Who painted the Mona Lisa?", ["Leonardo da Vinci", "da Vinci", "Leonardo"]),
    ("Who proposed the theory of general relativity?", ["Albert Einstein", "Einstein"]),
    ("What is the largest ocean on Earth?", ["Pacific", "Pacific Ocean"]),
    ("What is the longest river in South America?", ["Amazon", "Amazon River"]),
    ("What is the hardest natural substance?", ["diamond"]),
    ("In which year did World War II end?", ["1945"]),
    ("In which year did humans first land on the Moon?", ["1969"]),
    ("What is the square root of 144?", ["12", "twelve"]),
    ("What is the smallest prime number?", ["2", "two"]),
    ("What language has the most native speakers?", ["Mandarin", "Mandarin Chinese", "Chinese"]),
    ("What is the currency of Japan?", ["yen", "Japanese yen"]),
    ("What is the currency of the United Kingdom?", ["pound", "pound sterling", "pounds", "GBP"]),
    ("What organ pumps blood through the human body?", ["heart"]),
    ("What is the main component of the Sun?", ["hydrogen"]),
    ("How many strings does a standard guitar have?", ["6", "six"]),
    ("What is H2O commonly called?", ["water"]),
    ("Which animal is the largest mammal?", ["blue whale", "whale"]),
    ("What is the opposite of 'cold'?", ["hot"]),
    ("What color do you get by mixing blue and yellow?", ["green"]),
    ("How many hours are in a day?", ["24", "twenty-four"]),
    ("What is the tallest mountain on Earth?", ["Mount Everest", "Everest"]),
    ("Which element has atomic number 1?", ["hydrogen"]),
    ("What is the plural of 'mouse'?", ["mice"]),
]

# Appended for a suite large enough to tell two models apart (issue 12); the first 50 above keep their ids.
CAPITALS: list[tuple[str, list[str]]] = [
    ("Norway", ["Oslo"]), ("Sweden", ["Stockholm"]), ("Portugal", ["Lisbon"]), ("Greece", ["Athens"]),
    ("Russia", ["Moscow"]), ("China", ["Beijing"]), ("India", ["New Delhi", "Delhi"]), ("Mexico", ["Mexico City"]),
    ("Argentina", ["Buenos Aires"]), ("Peru", ["Lima"]), ("Chile", ["Santiago"]), ("Ireland", ["Dublin"]),
    ("Poland", ["Warsaw"]), ("Austria", ["Vienna"]), ("the Netherlands", ["Amsterdam"]), ("Belgium", ["Brussels"]),
    ("Switzerland", ["Bern", "Berne"]), ("Turkey", ["Ankara"]), ("South Korea", ["Seoul"]), ("Thailand", ["Bangkok"]),
    ("Vietnam", ["Hanoi"]), ("Indonesia", ["Jakarta"]), ("Nigeria", ["Abuja"]), ("Morocco", ["Rabat"]),
    ("Finland", ["Helsinki"]), ("Denmark", ["Copenhagen"]), ("Hungary", ["Budapest"]), ("the Czech Republic", ["Prague"]),
    ("Cuba", ["Havana"]), ("Colombia", ["Bogota", "Bogotá"]),
]
MORE_FACTS: list[tuple[str, list[str]]] = [
    ("What is the chemical symbol for silver?", ["Ag"]),
    ("What is the chemical symbol for copper?", ["Cu"]),
    ("What is the chemical symbol for lead?", ["Pb"]),
    ("How many planets are in the Solar System?", ["8", "eight"]),
    ("How many weeks are in a year?", ["52", "fifty-two"]),
    ("Who painted The Starry Night?", ["Vincent van Gogh", "van Gogh"]),
    ("Who wrote the novel Nineteen Eighty-Four?", ["George Orwell", "Orwell"]),
    ("What is the largest country by area?", ["Russia"]),
    ("Which planet has the most prominent rings?", ["Saturn"]),
    ("How many players does a soccer team have on the field?", ["11", "eleven"]),
]


def items() -> list[dict]:
    rng = random.Random(6)
    out = [{"id": f"fact-{i:03d}", "prompt": q, "answers": a} for i, (q, a) in enumerate(FACTS)]
    for i in range(60):
        op = ("+", "-", "*", "//")[i % 4]
        a, b = rng.randint(2, 99), rng.randint(2, 30)
        if op == "//":
            a = b * rng.randint(2, 20)  # exact division keeps answers integral
            question, value = f"What is {a} divided by {b}?", a // b
        elif op == "*":
            question, value = f"What is {a} times {b}?", a * b
        elif op == "-":
            question, value = f"What is {a} minus {b}?", a - b
        else:
            question, value = f"What is {a} plus {b}?", a + b
        out.append({"id": f"arith-{i:03d}", "prompt": question, "answers": [str(value)]})
    for i, (country, answers) in enumerate(CAPITALS):
        out.append({"id": f"capital-{i:03d}", "prompt": f"What is the capital of {country}?", "answers": answers})
    for i, (question, answers) in enumerate(MORE_FACTS):
        out.append({"id": f"fact2-{i:03d}", "prompt": question, "answers": answers})
    return out + _units_and_sequences(random.Random(12))


def _units_and_sequences(rng: random.Random) -> list[dict]:
    """Unit conversions, percentages and next-in-sequence questions; no answer is a number of its own question."""
    out = []
    units = [("minutes", "hours", 60), ("seconds", "minutes", 60), ("days", "weeks", 7), ("months", "years", 12),
             ("centimetres", "metres", 100), ("grams", "kilograms", 1000)]
    for i in range(24):
        small, big, factor = units[i % len(units)]
        n = rng.randint(2, 12)
        out.append({"id": f"units-{i:03d}", "prompt": f"How many {small} are in {n} {big}?", "answers": [str(n * factor)]})
    for i in range(18):
        percent, base = rng.choice((10, 20, 25, 50, 75)), rng.randint(2, 40) * 20
        while percent * base // 100 == percent:  # "10 percent of 100": the answer would echo the question
            base = rng.randint(2, 40) * 20
        out.append({"id": f"percent-{i:03d}", "prompt": f"What is {percent} percent of {base}?",
                    "answers": [str(percent * base // 100)]})
    for i in range(18):
        start, step = rng.randint(1, 30), rng.randint(2, 9)
        terms = [start + step * k for k in range(4)]
        out.append({"id": f"sequence-{i:03d}", "prompt": f"What number comes next: {', '.join(map(str, terms))}, ...?",
                    "answers": [str(start + step * 4)]})
    return out
