"""A small retrieval set written for coinfer: queries and their paraphrases.

Used to measure what pruning does to sentence embeddings (retrieval accuracy, cosine similarity).
Written by the project, not taken from any dataset. Each paraphrase says the same thing in mostly
other words (so retrieval is not plain word matching), and the pairs fall into loose topical groups
(weather, cooking, travel, sport, health, work, computing, money, home, nature, this system), so a
wrong passage is often on the same topic.

(Same-word distractors that change the meaning, e.g. by negation or swapped roles, were tried and
dropped: the unpruned all-MiniLM-L6-v2 prefers them over the paraphrase for 90 % of the queries, so
they measure the model's blind spot, not what pruning does to it.)
"""
from __future__ import annotations

# (query, paraphrase): passage i answers query i
PAIRS: tuple[tuple[str, str], ...] = (
    ('It is going to rain heavily tomorrow afternoon.',
     'Expect strong showers after lunch on the next day.'),
    ('The snow closed the mountain roads overnight.',
     'Passes through the peaks were shut during the night because of snowfall.'),
    ('Fog delayed most morning flights at the airport.',
     'Thick mist held up early departures.'),
    ('Boil the pasta for ten minutes in salted water.',
     'Cook the noodles in a salty pot for about ten minutes.'),
    ("She baked a chocolate cake for her brother's birthday.",
     "For her sibling's party she made a cocoa sponge."),
    ('Chop the onions finely before frying them.',
     'Dice the shallots into tiny pieces, then put them in the pan.'),
    ('The train to Berlin leaves at half past eight.',
     'Our rail service to the German capital departs at 8:30.'),
    ('We lost our luggage on the connecting flight.',
     'The airline misplaced our bags during the transfer.'),
    ('You need a visa to enter the country.',
     'Entry requires an official travel permit.'),
    ('The bus was cancelled because of the strike.',
     'Due to the walkout, the coach service did not run.'),
    ('The home team won the match in extra time.',
     'The local side clinched victory after the additional period.'),
    ('She runs five kilometres every morning.',
     'Each day at dawn she goes for a 5 km jog.'),
    ('The goalkeeper saved a penalty in the final minute.',
     'In the last moments the keeper stopped a spot kick.'),
    ('He broke the national record in the high jump.',
     'He set a new best for the country in that jumping event.'),
    ('Drinking enough water helps prevent headaches.',
     'Staying hydrated keeps migraines away.'),
    ('The doctor prescribed antibiotics for the infection.',
     'The physician gave her medicine to treat the bacterial illness.'),
    ('Regular exercise lowers the risk of heart disease.',
     'Working out often reduces the chance of cardiac problems.'),
    ('He sprained his ankle while hiking.',
     'He twisted a joint in his foot on a trail walk.'),
    ('Lack of sleep makes it hard to concentrate.',
     'Without enough rest, focusing becomes difficult.'),
    ('The meeting was moved to Thursday morning.',
     'We rescheduled the appointment for Thursday before noon.'),
    ('She was promoted to head of the sales team.',
     'She became the manager of the sales department.'),
    ('Please send me the report by Friday.',
     'I need the document from you before the end of the week.'),
    ('The company is hiring two new engineers.',
     'Two engineering positions are open at the firm.'),
    ('The budget for the project was cut in half.',
     'Project funding was reduced by fifty percent.'),
    ('Restart the computer to install the updates.',
     'The patches will be applied after a reboot.'),
    ('My laptop battery drains very quickly.',
     'The power cell of my notebook runs out fast.'),
    ('The website is down for maintenance tonight.',
     'Tonight the site is offline while it is being serviced.'),
    ('Back up your files before upgrading the system.',
     'Make a copy of your data prior to the OS upgrade.'),
    ('The printer is out of ink again.',
     'Once more the cartridge is empty.'),
    ('Interest rates rose for the third time this year.',
     'The central bank increased borrowing costs again, the third hike in twelve months.'),
    ('He saves a part of his salary every month.',
     'Each month he puts some of his pay aside.'),
    ('The price of petrol dropped last week.',
     'Fuel became cheaper over the past seven days.'),
    ('The shop offers a discount for students.',
     'Pupils get reduced prices at the store.'),
    ('The kitchen tap is leaking again.',
     'Water is dripping from the faucet once more.'),
    ('We painted the living room light blue.',
     'The lounge walls now have a pale azure colour.'),
    ("Don't forget to water the plants while I'm away.",
     'Please give the flowers a drink during my absence.'),
    ("The neighbours' dog barks all night.",
     "Next door's puppy keeps yapping until dawn."),
    ('The heating broke down in the middle of winter.',
     'Our radiators stopped working in midwinter.'),
    ('Bees are essential for pollinating crops.',
     'Harvests depend on these insects to carry pollen.'),
    ('The river flooded the nearby fields.',
     'Farmland next to the stream was under water after it overflowed.'),
    ('Many birds migrate south in autumn.',
     'In the fall numerous species fly to warmer regions.'),
    ('The forest fire spread quickly in the dry wind.',
     'Dry gusts made the wildfire race through the woods.'),
    ('The cat is sleeping on the sofa.',
     'The kitten is napping on the couch.'),
    ('The children built a sandcastle on the beach.',
     'The kids made a castle out of sand by the sea.'),
    ('The phone runs the first layers of the model.',
     'The first blocks of the network execute on the handset.'),
    ('Hidden states are sent over the wireless link to the server.',
     'Intermediate activations travel across the radio uplink to the edge machine.'),
    ('Pruning removes the smallest weights of each layer.',
     'Each layer loses its lowest-magnitude parameters.'),
    ('A higher transmit power makes the upload faster.',
     'Sending with more power increases the uplink rate.'),
    ('Lowering the clock frequency saves energy but adds delay.',
     'A slower processor clock uses less power and takes longer.'),
)


def queries() -> list[str]:
    return [q for q, _ in PAIRS]


def passages() -> list[str]:
    return [p for _, p in PAIRS]
