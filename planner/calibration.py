"""Calibration sentences for the measured output-quality model (coinfer.planner.quality).

48 sentences of varied topic and length. They are disjoint from coinfer.samples.SENTENCES, which are
kept as held-out sentences for checking the model's predictions (scripts/bench_quality). A few are
longer than the profile's token limit on purpose, so truncation is exercised.
"""

CALIBRATION_SENTENCES = (
    "The committee postponed its decision until the next quarterly meeting.",
    "Photosynthesis converts sunlight, water and carbon dioxide into sugar and oxygen.",
    "He forgot his umbrella again.",
    "Interest rates rose for the third time this year, and mortgage applications fell sharply.",
    "The goalkeeper saved a penalty in the last minute of extra time.",
    "Add a pinch of salt to the boiling water before the pasta goes in.",
    "Where is the nearest pharmacy?",
    "The river flooded the lower town after a week of heavy rain in the mountains.",
    "A compiler translates source code into machine instructions.",
    "She practises the violin for two hours every evening.",
    "The museum's new wing displays bronze tools from the early Iron Age.",
    "Thank you for your order; it will ship within three business days.",
    "Volcanic ash grounded flights across northern Europe for almost a week.",
    "The function returns an empty list when the input is None.",
    "Our neighbours are repainting their fence a bright shade of yellow.",
    "Quantum computers exploit superposition and entanglement to explore many states at once.",
    "Please restart the router and try again.",
    "The novel follows three generations of a family of fishermen on a remote island.",
    "Vaccines train the immune system to recognise a pathogen before an infection.",
    "The orchestra tuned up while the audience found their seats.",
    "Glaciers in the Alps have lost more than half of their volume since 1900.",
    "I would like a table for four at eight o'clock, please.",
    "The startup raised forty million dollars to build cheaper batteries for electric trucks.",
    "Bees communicate the direction of flowers through a waggle dance.",
    "Wind turbines stop automatically when gusts become dangerously strong.",
    "The detective noticed that the clock on the mantelpiece had stopped at midnight.",
    "Sort the array in place, then remove the duplicates in a single pass.",
    "Our flight was delayed by two hours because of fog at the airport.",
    "Children learn languages faster when they hear them spoken at home.",
    "The bridge was closed for repairs after inspectors found cracks in a support beam.",
    "Olive oil, garlic and lemon make a simple dressing for grilled fish.",
    "The patient reported mild headaches and occasional dizziness after the new medication.",
    "Satellites in low orbit circle the Earth roughly every ninety minutes.",
    "Nobody expected the quiet intern to win the chess tournament.",
    "The parliament passed the budget by a narrow margin late on Friday night.",
    "Regular backups protect you from losing work when a disk fails.",
    "A thick fog rolled in from the harbour and swallowed the lighthouse.",
    "Tigers are solitary hunters that mark their territory with scent.",
    "The spreadsheet crashed when I pasted fifty thousand rows into it.",
    "Wash your hands.",
    "The ancient city was abandoned after its wells ran dry during a long drought.",
    "Electric cars need fewer moving parts than cars with combustion engines, so their maintenance "
    "is usually cheaper, although replacing a worn battery pack can still be expensive.",
    "The team celebrated the release with pizza and a short speech from the director.",
    "Mountain villages often keep traditions that cities forgot long ago.",
    "After the storm, volunteers cleared fallen trees from the roads, repaired roofs, handed out "
    "drinking water and blankets, and checked on elderly residents who lived alone on the outskirts "
    "of the village, working late into the night for several days in a row.",
    "The library extends its opening hours during the exam period.",
    "A good night's sleep improves memory and concentration.",
    "The referee blew the whistle and the crowd fell silent.",
)
