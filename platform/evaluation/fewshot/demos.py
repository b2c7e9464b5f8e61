"""The hand-written demonstrations of the eight paper tasks (dlm.md §5.2: hand-written, shared by every model
family, disjoint from the evaluation sets).

Written for this project, not drawn from any dataset, each in the *document shape* of its task's Hugging Face
dataset (after the task's ``process_docs``, for RACE), so the very template that renders a test document renders
its demonstrations. lm-eval takes them as ``fewshot_config.samples`` with the ``first_n`` sampler: every test
document sees the same demonstrations in the same order. Gold positions vary so that no demonstration teaches
"always (A)". Editing one changes every prompt of its task, hence the task's protocol hash (the hash covers
the rendered prompts).
"""
from __future__ import annotations

MMLU = [
    {"question": "Which gas makes up the largest share of the air in Earth's lower atmosphere?",
     "subject": "high_school_chemistry", "choices": ["Oxygen", "Carbon dioxide", "Nitrogen", "Argon"], "answer": 2},
    {"question": "A bakery sells rolls at 3 for $2. How much do 12 rolls cost?",
     "subject": "elementary_mathematics", "choices": ["$8", "$6", "$9", "$12"], "answer": 0},
]

RACE = [
    {"article": "Maya had never grown anything before. In March her grandfather gave her a paper packet of bean "
                "seeds and a clay pot. She watered the pot every morning before school, and on the ninth day a pale "
                "green shoot pushed through the soil. By July the plant had climbed the garden fence, and Maya was "
                "picking beans for dinner.",
     "question": "How long did the first shoot take to appear?",
     "options": ["Two days", "One month", "All summer", "Nine days"], "answer": "D"},
    {"article": "The library in Alder Bay started lending tools last year. Members can borrow a drill, a ladder or a "
                "sewing machine for one week, the same way they borrow a book. The head librarian says the service "
                "saves families money and keeps tools from gathering dust in garages.",
     "question": "Why does the head librarian like the tool loans?",
     "options": ["They make the library quieter", "They save money and put tools to use",
                 "They replace the book collection", "They are required by the town"], "answer": "B"},
]

STORYCLOZE = [
    {"input_sentence_1": "Tom's alarm did not ring on Monday.", "input_sentence_2": "He woke up twenty minutes late.",
     "input_sentence_3": "He skipped breakfast and ran to the station.",
     "input_sentence_4": "The train doors were just starting to close.",
     "sentence_quiz1": "Tom squeezed inside and reached work on time.",
     "sentence_quiz2": "Tom decided to plant tulips along the platform.", "answer_right_ending": 1},
    {"input_sentence_1": "Lena wanted to learn the guitar.",
     "input_sentence_2": "She practised every evening after dinner.",
     "input_sentence_3": "For weeks her fingertips were sore.",
     "input_sentence_4": "Slowly the chords began to ring clearly.",
     "sentence_quiz1": "Lena gave the guitar to her cat and never spoke again.",
     "sentence_quiz2": "A year later she played a song at her sister's wedding.", "answer_right_ending": 2},
]

OPENBOOKQA = [
    {"id": "latentlm-demo-1",
     "question_stem": "A metal spoon left standing in a pot of hot soup soon feels hot because metal",
     "choices": {"text": ["reflects light", "conducts heat well", "is attracted to magnets", "dissolves in water"],
                 "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    {"id": "latentlm-demo-2", "question_stem": "A seedling on a windowsill bends toward the glass as it responds to",
     "choices": {"text": ["sunlight", "noise from the street", "cold air", "the weight of its leaves"],
                 "label": ["A", "B", "C", "D"]}, "answerKey": "A"},
]

HELLASWAG = [
    {"ind": 0, "activity_label": "Making a sandwich",
     "ctx_a": "A man lays two slices of bread on a cutting board.", "ctx_b": "he",
     "ctx": "A man lays two slices of bread on a cutting board. he",
     "endings": ["throws the bread into a swimming pool.", "sings into the toaster for a while.",
                 "spreads peanut butter on one slice and jam on the other.",
                 "puts the cutting board on his head and walks away."],
     "source_id": "latentlm-demo", "split": "demo", "split_type": "indomain", "label": "2"},
    {"ind": 1, "activity_label": "Washing a car",
     "ctx_a": "A woman sprays soapy water over the hood of a red car.", "ctx_b": "she",
     "ctx": "A woman sprays soapy water over the hood of a red car. she",
     "endings": ["climbs onto the roof and falls asleep.", "scrubs the hood with a large sponge and rinses it off.",
                 "paints the windows black with a brush.", "drives the car into a lake."],
     "source_id": "latentlm-demo", "split": "demo", "split_type": "indomain", "label": "1"},
]

SIQA = [
    {"context": "Jordan forgot his umbrella and got soaked walking home from school.",
     "question": "How would Jordan feel afterwards?",
     "answerA": "cold and wet", "answerB": "proud of himself", "answerC": "ready to swim", "label": "1"},
    {"context": "Priya baked a tray of cookies and carried them next door to her new neighbours.",
     "question": "Why did Priya do this?",
     "answerA": "to get rid of old flour", "answerB": "to win a baking contest",
     "answerC": "to make friends with the neighbours", "label": "3"},
]

SQUAD = [
    {"id": "latentlm-demo-1", "title": "Kestrel_Point_Lighthouse",
     "context": "The lighthouse at Kestrel Point was built in 1874 from granite quarried on the headland. Its lamp "
                "burned whale oil at first and later kerosene, and it was electrified in 1931. Since 1989 the light "
                "has run automatically, and the keeper's cottage now houses a small museum.",
     "question": "In what year was the lighthouse electrified?",
     "answers": {"text": ["1931"], "answer_start": [170]}},
]
