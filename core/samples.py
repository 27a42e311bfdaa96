"""Sample sentences: what the demo, the closed loop and the device group send when given no input."""

SENTENCES = [
    "The edge server finishes what the device started.",
    "A weak device runs the first blocks of the transformer.",
    "Hidden states cross the wireless link to the server.",
    "Pruning trades a little accuracy for a lot of time and energy.",
    "The planner chooses the split point, the pruning ratios and the transmit power.",
    "It is raining in Stockholm this morning.",
    "My cat sleeps on the keyboard whenever I try to work.",
    "Bake the bread for forty minutes at two hundred degrees.",
    "The train to Uppsala leaves from platform three.",
    "Split inference keeps raw data on the device.",
    "Transmit power and bandwidth set the uplink rate.",
    "Lower clock frequencies save energy but take longer.",
]
