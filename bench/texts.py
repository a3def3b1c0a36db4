"""Texts spoken by the benchmarks.

`WYOMING_BENCH_TEXTS` are copied verbatim from the default corpus of the
`wyoming-bench` package (PyPI, version 2026.10.0, `wyoming_bench/tts/texts.py`,
`DEFAULT_TEXTS`: one sample per sentence count, 1..4). They are copied rather
than imported so that package is not a dependency of this project.
"""

from __future__ import annotations

# Source: wyoming-bench 2026.10.0, wyoming_bench/tts/texts.py, DEFAULT_TEXTS.
WYOMING_BENCH_TEXTS: list[str] = [
    "The weather today is sunny and warm with a light breeze.",
    "The quick brown fox jumps over the lazy dog. This sentence tests two-sentence synthesis.",
    "Text to speech is a fascinating field. Modern neural models produce remarkably natural "
    "audio. We benchmark them to compare performance.",
    "Welcome to the Wyoming protocol benchmark. We measure latency, streaming behavior, and "
    "throughput. Each sample is between one and four sentences long. Results help us choose "
    "the best engine for real-time use.",
]

# One sentence of about sixty words: no full stop until the end, so a server that
# only splits at sentence boundaries must synthesize all of it before any audio.
LONG_SENTENCE = (
    "When the morning train finally pulled into the small station at the edge of the valley, "
    "the passengers who had been waiting on the cold platform since dawn gathered their bags, "
    "buttoned their coats against the wind, and climbed aboard with the quiet relief of people "
    "who had begun to wonder whether anything would ever arrive on time again."
)

# A paragraph of about 1,500 characters of ordinary prose.
PARAGRAPH = (
    "The old lighthouse stood at the end of a narrow spit of land, where the river met the sea "
    "and the water changed colour from brown to a deep and restless green. For more than a "
    "hundred years its lamp had turned every night, warning fishing boats and cargo ships away "
    "from the sandbanks that shifted with each winter storm. The keeper, a patient man named "
    "Thomas, lived in a small stone cottage beside the tower with his wife and their two "
    "children. Every evening he climbed the one hundred and twelve steps to the lantern room, "
    "trimmed the wick, polished the great glass lens, and wound the clockwork that kept the "
    "light turning until morning. In the summer the work was easy, and visitors from the town "
    "would walk out along the beach to watch the sunset from the gallery. In the winter it was "
    "hard and lonely, and the wind howled around the tower so loudly that the family had to "
    "shout to hear one another at supper. Still, Thomas never missed a night. He kept a log of "
    "every ship that passed, every storm that blew, and every strange light he saw on the "
    "horizon, and those worn notebooks now sit in the town museum, where children read them "
    "and try to imagine what it was like to live so close to the edge of the world. When the "
    "light was finally automated, Thomas was given a medal and a small pension, but people say "
    "he still walked out to the point each evening, just to make sure the lamp came on. "
    "Some nights, they add, you can still see him there, a small dark figure against the sky."
)

# Further paragraphs so that the long texts are not one paragraph over and over.
_MORE_PROSE: list[str] = [
    "Most cities grow without a plan. A market forms where two roads cross, a few houses "
    "gather around it, and within a generation there are workshops, schools and a church. "
    "Streets follow the paths that carts once took, which is why so many old town centres "
    "twist and turn in ways that confuse visitors. Later, engineers arrive with straight "
    "lines and wide avenues, and the city becomes a mixture of accident and intention. "
    "Walking through it, you can often tell which parts were built by people who expected "
    "to stay, and which were built by people who were only passing through.",
    "Gardening teaches patience in a way that few other hobbies can. You plant a seed in "
    "early spring and then you wait, watering it each morning, pulling weeds, and worrying "
    "about frost. Some seeds never come up at all. Others grow so quickly that they crowd "
    "out their neighbours and have to be thinned. By midsummer the beds are full, and the "
    "gardener who was anxious in April is now giving away courgettes to anyone who will take "
    "them. Then autumn comes, the leaves fall, and the whole cycle begins again.",
    "The library opened at nine, but a small queue always formed a few minutes earlier. "
    "There was the retired teacher who read every newspaper from front to back, the student "
    "who needed a quiet desk near a power socket, and the young father with a toddler who "
    "wanted nothing more than the picture books on the lowest shelf. The librarian knew "
    "them all by name. She knew which of them would ask for help with the printer, and which "
    "would pretend they did not need it until the very last moment.",
]


def prose(chars: int) -> str:
    """Ordinary prose of at most `chars` characters, ending at a sentence boundary."""
    pieces = [PARAGRAPH, *_MORE_PROSE]
    out: list[str] = []
    total = 0
    i = 0
    while True:
        sentences = [s.strip() + "." for s in pieces[i % len(pieces)].split(".") if s.strip()]
        for sentence in sentences:
            add = len(sentence) + (1 if out else 0)
            if total + add > chars:
                return " ".join(out)
            out.append(sentence)
            total += add
        i += 1


def stream_chunks(text: str, size: int = 20) -> list[str]:
    """Split text into pieces of `size` characters, mid-word, as an LLM stream would."""
    return [text[i : i + size] for i in range(0, len(text), size)]
